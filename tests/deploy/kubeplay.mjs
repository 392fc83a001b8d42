// Turn rendered manifests (kubectl kustomize output) into one file for `podman kube play`.
// SPDX-License-Identifier: GPL-2.0-or-later
//
//   node kubeplay.mjs RENDERED OUT --into DEPLOYMENT [--add DEPLOYMENT]... [--image OLD=NEW]...
//
// Writes OUT (the ConfigMaps and the Deployment DEPLOYMENT) and prints "NAME HOSTPORT" for
// each published port. Only what podman cannot emulate is changed; every container keeps
// its image, args, probes, resources, securityContext and volumes from the manifests:
// - Services, PDBs, NetworkPolicies, Namespaces are dropped: they are cluster objects
//   (validate.mjs checks them offline).
// - replicas 1: podman starts every replica as its own pod with the same host ports.
// - images are renamed to the locally built tags (--image NAME=LOCALREF).
// - every containerPort is published on 127.0.0.1 at a free port (podman publishes them
//   all, on every address, unless told otherwise).
// - a cluster network with Service DNS: podman cannot connect two pods without a bridge,
//   and refuses a shared network namespace for pods. So the containers of each --add
//   Deployment join the --into pod (its pod-level securityContext moves to the
//   containers) and hostAliases point its Service names (NAME, NAME.NS,
//   NAME.NS.svc.cluster.local) at 127.0.0.1, where it listens in the shared namespace.
import fs from 'node:fs';
import net from 'node:net';
import YAML from 'yaml';

const args = process.argv.slice(2);
const [input, output] = args;
let into = null;
const add = [];
const images = [];
for (let i = 2; i < args.length; i += 2) {
  if (args[i] === '--into') into = args[i + 1];
  else if (args[i] === '--add') add.push(args[i + 1]);
  else if (args[i] === '--image') images.push(args[i + 1].split('='));
  else throw new Error(`unknown option ${args[i]}`);
}
if (!input || !output || !into) {
  console.error('usage: kubeplay.mjs RENDERED OUT --into DEPLOYMENT [--add DEPLOYMENT]... [--image OLD=NEW]...');
  process.exit(2);
}

const objs = YAML.parseAllDocuments(fs.readFileSync(input, 'utf8'), { version: '1.1', uniqueKeys: true })
  .map((d) => d.toJS()).filter(Boolean);
const deployment = (name) => {
  const d = objs.find((o) => o.kind === 'Deployment' && o.metadata.name === name);
  if (!d) throw new Error(`no Deployment ${name} in ${input}`);
  return d;
};

const freePort = () => new Promise((resolve, reject) => {
  const s = net.createServer();
  s.on('error', reject);
  s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
});

const main = deployment(into);
const pod = main.spec.template.spec;
main.spec.replicas = 1;
pod.hostAliases = pod.hostAliases ?? [];
for (const name of add) {
  const d = deployment(name);
  const spec = d.spec.template.spec;
  const podSc = { ...(spec.securityContext ?? {}) };
  delete podSc.seccompProfile; // the same RuntimeDefault as the --into pod
  delete podSc.fsGroup;
  for (const c of spec.containers) {
    c.name = `${name}-${c.name}`;
    c.securityContext = { ...podSc, ...(c.securityContext ?? {}) };
    pod.containers.push(c);
  }
  pod.volumes = [...(pod.volumes ?? []), ...(spec.volumes ?? [])];
  const ns = d.metadata.namespace;
  const hostnames = [name];
  if (ns) hostnames.push(`${name}.${ns}`, `${name}.${ns}.svc`, `${name}.${ns}.svc.cluster.local`);
  pod.hostAliases.push({ ip: '127.0.0.1', hostnames });
}
for (const c of pod.containers) {
  for (const [from, to] of images) {
    if (c.image === from || c.image.startsWith(`${from}:`) || c.image.startsWith(`${from}@`)) c.image = to;
  }
  for (const p of c.ports ?? []) {
    p.hostIP = '127.0.0.1';
    p.hostPort = await freePort();
    console.log(`${p.name ?? p.containerPort} ${p.hostPort}`);
  }
}
const out = [...objs.filter((o) => o.kind === 'ConfigMap'), main];
fs.writeFileSync(output, out.map((o) => YAML.stringify(o)).join('---\n'));
