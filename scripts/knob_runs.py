"""Runs a timing child program once per setting of the environment knobs (the knobs are read once
per process, so each setting gets a subprocess). Shared by the scripts/time_*.py sweeps."""

import os
import subprocess
import sys


def run_settings(child: str, settings: list) -> None:
    """`child` (Python source) under each setting: space-separated VAR=value pairs ("" runs the
    defaults), with a header line before each."""
    for setting in settings or [""]:
        env = dict(os.environ)
        for kv in setting.split():
            key, val = kv.split("=", 1)
            env[key] = val
        print(f"--- {setting or 'defaults'}", flush=True)
        subprocess.run([sys.executable, "-c", child], env=env, timeout=300)
