// Offline validator for the Kubernetes manifests of deploy/kubernetes.
// SPDX-License-Identifier: GPL-2.0-or-later
//
//   node validate.mjs [--consistency] FILE...     validate; exit 1 on any error
//   node validate.mjs --fixtures DIR              every DIR/*.yaml must be rejected, every
//                                                 error containing its "# expect: TEXT" line
//                                                 (a "# consistency" line adds those checks)
//   FILE may be "-" (standard input, e.g. `kubectl kustomize DIR | node validate.mjs -`).
//
// What it checks, without an API server:
// - YAML as kubectl reads it: YAML 1.1 (yes/no/on/off are booleans) and unique keys.
// - Each object against the OpenAPI schema of its kind (npm kubernetes-models: ajv
//   validators with types, required fields, enums, formats).
// - Unknown fields, which those schemas allow: every key is looked up in the generated
//   models of @kubernetes/client-node (they list every field of every kind).
// - Kustomization files: known fields, and the files they reference exist.
// - With --consistency (for a rendered set, e.g. kustomize output): what an API server or
//   a running cluster would reveal later: selectors that match no pod template, named
//   ports that do not exist, gRPC probes on a port the container does not declare,
//   ConfigMaps that are not there, PDB per Deployment, the hardening this project
//   requires (see deploy/README.md), the grace period covering miltergw's drain_timeout,
//   and the headless Service behind miltergw's filter targets.
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';

const errors = [];
const err = (where, msg) => errors.push(`${where}: ${msg}`);

// ---------------------------------------------------------------- YAML as kubectl reads it
function parseDocs(text, file) {
  const docs = YAML.parseAllDocuments(text, { version: '1.1', uniqueKeys: true, merge: false });
  const out = [];
  docs.forEach((d, i) => {
    for (const e of d.errors) err(`${file}: document ${i + 1}`, `YAML: ${e.message.split('\n')[0]}`);
    if (d.errors.length) return;
    const v = d.toJS({ maxAliasCount: 0 });
    if (v !== null && v !== undefined) out.push({ obj: v, where: `${file}: document ${i + 1}` });
  });
  return out;
}

// ------------------------------------------------------------------ schema (types, required)
async function schemaCheck(obj, where) {
  const [group, version] = obj.apiVersion.includes('/') ? obj.apiVersion.split('/') : ['', obj.apiVersion];
  const mod = group ? `kubernetes-models/${group}/${version}/${obj.kind}` : `kubernetes-models/${version}/${obj.kind}`;
  let Cls;
  try {
    Cls = (await import(mod))[obj.kind];
  } catch {
    err(where, `unknown apiVersion/kind ${obj.apiVersion} ${obj.kind}`);
    return false;
  }
  try {
    new Cls(obj).validate();
  } catch (e) {
    for (const line of String(e.message).split(/,\s*(?=data)/)) err(where, `schema: ${line.replace(/^data/, '')}`);
  }
  return true;
}

// ------------------------------------------------------------------------- unknown fields
const modelCache = new Map();
async function model(name) {
  if (!modelCache.has(name)) {
    const m = await import(`@kubernetes/client-node/dist/gen/models/${name}.js`);
    modelCache.set(name, m[name].attributeTypeMap);
  }
  return modelCache.get(name);
}
const LEAF = new Set(['string', 'number', 'boolean', 'Date', 'IntOrString', 'any', 'object']);
const isMap = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

async function fieldCheck(value, type, p, where) {
  if (value === null || value === undefined || LEAF.has(type)) return;
  let m = /^Array<(.+)>$/.exec(type);
  if (m) {
    if (Array.isArray(value)) for (let i = 0; i < value.length; i++) await fieldCheck(value[i], m[1], `${p}[${i}]`, where);
    return;
  }
  m = /^\{ \[key: string\]: (.+); \}$/.exec(type);
  if (m) {
    if (isMap(value)) for (const [k, v] of Object.entries(value)) await fieldCheck(v, m[1], `${p}.${k}`, where);
    return;
  }
  if (!isMap(value)) return; // a wrong type: the schema check reports it
  const attrs = await model(type);
  for (const [k, v] of Object.entries(value)) {
    const a = attrs.find((x) => x.baseName === k);
    if (!a) err(where, `unknown field "${p ? p + '.' : ''}${k}" (not in ${type})`);
    else await fieldCheck(v, a.type, p ? `${p}.${k}` : k, where);
  }
}

function modelName(obj) {
  const version = obj.apiVersion.split('/').pop();
  return version.charAt(0).toUpperCase() + version.slice(1) + obj.kind;
}

// ------------------------------------------------------------------------- kustomization
const KUSTOMIZATION = {
  '': ['apiVersion', 'kind', 'metadata', 'resources', 'components', 'crds', 'namespace',
    'namePrefix', 'nameSuffix', 'labels', 'commonLabels', 'commonAnnotations', 'images',
    'replicas', 'patches', 'configMapGenerator', 'secretGenerator', 'generatorOptions',
    'generators', 'transformers', 'validators', 'replacements', 'buildMetadata',
    'sortOptions', 'openapi', 'helmCharts', 'helmGlobals', 'configurations'],
  configMapGenerator: ['name', 'namespace', 'behavior', 'files', 'literals', 'envs', 'options'],
  secretGenerator: ['name', 'namespace', 'behavior', 'files', 'literals', 'envs', 'options', 'type'],
  images: ['name', 'newName', 'newTag', 'digest', 'tagSuffix'],
  patches: ['path', 'patch', 'target', 'options'],
  labels: ['pairs', 'includeSelectors', 'includeTemplates', 'fields'],
  replicas: ['name', 'count'],
};

function kustomizationCheck(k, file, where) {
  const dir = path.dirname(file);
  for (const key of Object.keys(k)) if (!KUSTOMIZATION[''].includes(key)) err(where, `unknown kustomization field "${key}"`);
  for (const [list, keys] of Object.entries(KUSTOMIZATION)) {
    if (!list || k[list] === undefined) continue;
    if (!Array.isArray(k[list])) { err(where, `${list} must be a list`); continue; }
    k[list].forEach((e, i) => {
      if (!isMap(e)) return err(where, `${list}[${i}] must be a map`);
      for (const key of Object.keys(e)) if (!keys.includes(key)) err(where, `unknown field "${list}[${i}].${key}"`);
    });
  }
  if (file === '-') return;
  const must = (rel, what) => {
    if (typeof rel !== 'string') return err(where, `${what} must be a string`);
    if (!fs.existsSync(path.join(dir, rel))) err(where, `${what} ${rel}: no such file or directory`);
  };
  for (const r of k.resources ?? []) must(r, 'resource');
  for (const p of k.patches ?? []) if (p.path !== undefined) must(p.path, 'patch');
  for (const g of [...(k.configMapGenerator ?? []), ...(k.secretGenerator ?? [])]) {
    for (const f of g.files ?? []) must(String(f).replace(/^[^=]*=/, ''), 'generator file');
  }
}

// --------------------------------------------------------------------------- one object
async function checkObject(obj, file, where) {
  if (!isMap(obj)) return err(where, 'not a map');
  if (typeof obj.apiVersion !== 'string' || typeof obj.kind !== 'string') return err(where, 'apiVersion and kind are required strings');
  const name = obj.metadata?.name;
  const w = `${where} (${obj.kind}${name ? '/' + name : ''})`;
  if (obj.apiVersion.startsWith('kustomize.config.k8s.io/')) return kustomizationCheck(obj, file, w);
  if (await schemaCheck(obj, w)) await fieldCheck(obj, modelName(obj), '', w);
}

// ------------------------------------------------------------ consistency of a rendered set
const matches = (sel, labels) => isMap(sel) && Object.keys(sel).length > 0 &&
  Object.entries(sel).every(([k, v]) => labels?.[k] === v);

function durationSeconds(s) {
  const m = /^(\d+)(ms|s|m|h)?$/.exec(String(s).trim());
  if (!m) return NaN;
  return Number(m[1]) * { ms: 0.001, s: 1, m: 60, h: 3600, undefined: 1 }[m[2]];
}

function consistency(objs) {
  const of = (kind) => objs.filter((o) => o.obj.kind === kind);
  const deployments = of('Deployment');
  const configMaps = of('ConfigMap');
  const services = of('Service');
  const templates = deployments.map((d) => d.obj.spec?.template ?? {});
  const named = (o) => `${o.obj.kind}/${o.obj.metadata?.name}`;
  const podsOf = (sel) => deployments.filter((d) => matches(sel, d.obj.spec?.template?.metadata?.labels));

  for (const d of deployments) {
    const w = named(d);
    const spec = d.obj.spec ?? {};
    const pod = spec.template?.spec ?? {};
    if (!matches(spec.selector?.matchLabels, spec.template?.metadata?.labels)) err(w, 'selector does not match the pod template labels');
    if (!of('PodDisruptionBudget').some((p) => matches(p.obj.spec?.selector?.matchLabels, spec.template?.metadata?.labels))) err(w, 'no PodDisruptionBudget selects its pods');
    const volumes = pod.volumes ?? [];
    for (const v of volumes) {
      if (v.configMap && !configMaps.some((c) => c.obj.metadata?.name === v.configMap.name)) err(w, `volume ${v.name}: ConfigMap ${v.configMap.name} is not in the set`);
    }
    for (const c of pod.containers ?? []) {
      const cw = `${w} container ${c.name}`;
      const ports = c.ports ?? [];
      for (const p of ports) if (!(p.containerPort >= 1 && p.containerPort <= 65535)) err(cw, `containerPort ${p.containerPort} out of range`);
      for (const probe of ['livenessProbe', 'readinessProbe']) {
        if (!c[probe]) { err(cw, `no ${probe}`); continue; }
        const port = c[probe].httpGet?.port ?? c[probe].tcpSocket?.port ?? c[probe].grpc?.port;
        if (typeof port === 'string' && !ports.some((p) => p.name === port)) err(cw, `${probe} names port "${port}", which the container does not declare`);
        // a gRPC probe takes a number only; it must be one the container serves
        if (c[probe].grpc && !ports.some((p) => p.containerPort === c[probe].grpc.port)) err(cw, `${probe}: gRPC port ${c[probe].grpc.port} is not a containerPort of the container`);
      }
      const sc = c.securityContext ?? {};
      const psc = pod.securityContext ?? {};
      if (sc.allowPrivilegeEscalation !== false) err(cw, 'securityContext.allowPrivilegeEscalation must be false');
      if (sc.readOnlyRootFilesystem !== true) err(cw, 'securityContext.readOnlyRootFilesystem must be true');
      if (!(sc.capabilities?.drop ?? []).includes('ALL')) err(cw, 'securityContext.capabilities.drop must include ALL');
      const nonRoot = sc.runAsNonRoot ?? psc.runAsNonRoot;
      const explicitRoot = sc.runAsNonRoot === false && sc.runAsUser === 0;
      if (nonRoot !== true && !explicitRoot) err(cw, 'must set runAsNonRoot: true (or opt out explicitly with runAsNonRoot: false, runAsUser: 0)');
      if (!c.resources?.requests?.cpu || !c.resources?.requests?.memory || !c.resources?.limits?.memory) err(cw, 'needs resources.requests.cpu/memory and resources.limits.memory');
      // miltergw: the grace period must cover its preStop delay and its drain_timeout.
      for (const m of c.volumeMounts ?? []) {
        const vol = volumes.find((v) => v.name === m.name);
        const cm = vol?.configMap && configMaps.find((x) => x.obj.metadata?.name === vol.configMap.name);
        const text = cm?.obj.data?.['miltergw.yaml'];
        if (!text) continue;
        let conf;
        try { conf = YAML.parse(text, { uniqueKeys: true }); } catch (e) { err(cw, `miltergw.yaml: ${e.message}`); continue; }
        const drain = durationSeconds(conf.drain_timeout ?? '30s');
        const cmd = c.lifecycle?.preStop?.exec?.command ?? [];
        const preStop = cmd[0] === 'sleep' ? Number(cmd[1]) : (c.lifecycle?.preStop?.sleep?.seconds ?? 0);
        const grace = pod.terminationGracePeriodSeconds ?? 30;
        if (!(grace > preStop + drain)) err(cw, `terminationGracePeriodSeconds ${grace} does not exceed preStop ${preStop}s + drain_timeout ${drain}s`);
        for (const f of conf.filters ?? []) {
          const t = /^dns:\/\/\/([a-z0-9-]+)(?:\.([a-z0-9-]+)(?:\.svc(?:\.[a-z0-9.-]+)?)?)?:(\d+)$/.exec(f.target ?? '');
          if (!t) continue; // not a cluster Service name
          const svc = services.find((s) => s.obj.metadata?.name === t[1] && (!t[2] || !s.obj.metadata?.namespace || s.obj.metadata.namespace === t[2]));
          if (!svc) { err(cw, `filter ${f.name}: target ${f.target}: no Service ${t[1]}${t[2] ? ' in namespace ' + t[2] : ''}`); continue; }
          if (svc.obj.spec?.clusterIP !== 'None') err(cw, `filter ${f.name}: Service ${t[1]} must be headless (clusterIP: None) for round_robin`);
          if (f.load_balancing !== 'round_robin') err(cw, `filter ${f.name}: load_balancing should be round_robin over a headless Service`);
          if (!(svc.obj.spec?.ports ?? []).some((p) => String(p.port) === t[3])) err(cw, `filter ${f.name}: Service ${t[1]} has no port ${t[3]}`);
        }
      }
    }
  }
  for (const s of services) {
    const sel = s.obj.spec?.selector;
    const pods = podsOf(sel);
    if (!pods.length) { err(named(s), 'selector matches no pod template'); continue; }
    for (const p of s.obj.spec?.ports ?? []) {
      const target = p.targetPort ?? p.port;
      const ok = pods.some((d) => (d.obj.spec.template.spec.containers ?? []).some((c) => (c.ports ?? []).some((cp) => cp.name === target || cp.containerPort === target)));
      if (!ok) err(named(s), `port ${p.name ?? p.port}: targetPort ${target} is not a port of the selected pods`);
    }
  }
  for (const p of of('PodDisruptionBudget')) if (!podsOf(p.obj.spec?.selector?.matchLabels).length) err(named(p), 'selector matches no pod template');
  for (const n of of('NetworkPolicy')) {
    if (!podsOf(n.obj.spec?.podSelector?.matchLabels).length) err(named(n), 'podSelector matches no pod template');
    for (const r of n.obj.spec?.ingress ?? []) {
      for (const f of r.from ?? []) if (f.podSelector && !podsOf(f.podSelector.matchLabels).length) err(named(n), 'ingress from.podSelector matches no pod template');
    }
  }
  if (!templates.length) err('set', 'no Deployment found');
}

// ------------------------------------------------------------------------------------ main
async function validateFiles(files, withConsistency) {
  const all = [];
  for (const f of files) {
    const text = f === '-' ? fs.readFileSync(0, 'utf8') : fs.readFileSync(f, 'utf8');
    for (const d of parseDocs(text, f)) {
      await checkObject(d.obj, f, d.where);
      all.push(d);
    }
  }
  if (withConsistency) consistency(all);
  return all.length;
}

const argv = process.argv.slice(2);
if (argv[0] === '--fixtures') {
  const dir = argv[1];
  let bad = 0;
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.yaml')).sort();
  for (const f of files) {
    const file = path.join(dir, f);
    const expect = /^# expect: (.+)$/m.exec(fs.readFileSync(file, 'utf8'))?.[1]?.trim();
    errors.length = 0;
    await validateFiles([file], /^# consistency$/m.test(fs.readFileSync(file, 'utf8')));
    // Rejected, and for that reason only: each fixture is broken in exactly one way.
    const hit = expect && errors.length && errors.every((e) => e.includes(expect)) && errors[0];
    if (hit) console.log(`ok - ${f} rejected: ${hit.split('\n')[0]}`);
    else {
      bad++;
      console.log(`not ok - ${f}: expected an error containing "${expect}", got: ${errors.length ? errors.join(' | ') : 'no error'}`);
    }
  }
  console.log(`fixtures: ${files.length - bad} passed, ${bad} failed`);
  process.exit(bad || !files.length ? 1 : 0);
} else {
  const consistencyFlag = argv[0] === '--consistency';
  const files = consistencyFlag ? argv.slice(1) : argv;
  if (!files.length) {
    console.error('usage: validate.mjs [--consistency] FILE... | --fixtures DIR');
    process.exit(2);
  }
  const n = await validateFiles(files, consistencyFlag);
  for (const e of errors) console.log(`error: ${e}`);
  console.log(`${files.join(' ')}: ${n} object(s), ${errors.length} error(s)`);
  process.exit(errors.length ? 1 : 0);
}
