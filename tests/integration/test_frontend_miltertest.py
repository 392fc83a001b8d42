#!/usr/bin/python3
"""OpenDKIM's miltertest (an independent MTA-side implementation) against miltergw.

Runs each Lua script in miltertest/ with `miltertest -s SCRIPT`; the gateway's port is
passed in MGW_PORT (the scripts build the Sendmail-syntax socket `inet:PORT@127.0.0.1`).
A script passes when miltertest exits 0 and it printed `mgwtest: <name> passed`.

Usage: /usr/bin/python3 test_frontend_miltertest.py --miltergw PATH [unittest options]
"""
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgwtest  # noqa: E402

LUA_DIR = os.path.join(mgwtest.HERE, "miltertest")


class FrontendMiltertest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gw = mgwtest.Miltergw()

    @classmethod
    def tearDownClass(cls):
        if cls.gw.alive():
            cls.gw.stop(expect=None)

    def run_script(self, name, timeout=60):
        env = dict(os.environ, MGW_PORT=str(self.gw.port), MGW_LUA_DIR=LUA_DIR)
        r = subprocess.run([mgwtest.MILTERTEST, "-s", os.path.join(LUA_DIR, name + ".lua")],
                           cwd=LUA_DIR, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout)
        out = r.stdout.decode("utf-8", "replace")
        detail = "miltertest %s.lua exit %d; output:\n%s\nmiltergw log tail:\n%s" % (
            name, r.returncode, out, self.gw.proc.log_tail())
        self.assertEqual(r.returncode, 0, detail)
        self.assertIn("mgwtest: %s passed" % name, out, detail)
        self.assertTrue(self.gw.alive(), detail)

    def test_1_negotiate(self):
        self.run_script("negotiate")

    def test_2_every_stage(self):
        self.run_script("stages")

    def test_3_abort_then_second_message(self):
        self.run_script("abort")

    def test_4_macros(self):
        self.run_script("macros")

    def test_9_sigterm_clean_exit(self):
        self.gw.stop(expect=0)
        self.assertEqual(self.gw.error_lines(), [])


if __name__ == "__main__":
    mgwtest.main()
