"""The first-use kernel build never hangs: a build killed half-way leaves torch's FileBaton `lock`
file behind (which would make every later build wait forever); lmzoo builds under an flock, which
the OS releases when its holder dies, and clears the stale baton while holding it."""

from __future__ import annotations

import subprocess
import sys
import time

import torch.utils.cpp_extension

from lmzoo.quant import kernels


def test_stale_baton_is_cleared_and_a_killed_holder_does_not_block(tmp_path, monkeypatch):
    build = tmp_path / "key"
    build.mkdir()
    (build / "lock").write_text("")  # what a SIGKILLed torch build leaves
    # a process holding our lock, then killed: the OS must release it
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"f = open({str(build / 'lmzoo.lock')!r}, 'w'); fcntl.flock(f, fcntl.LOCK_EX)\n"
        "print('held', flush=True); time.sleep(600)")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    calls = []

    def fake_load(**kw):  # the compile itself is not under test: that the lock state lets it start is
        calls.append(((build / "lock").exists(), kw["build_directory"]))
        return "module"

    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake_load)
    t0 = time.time()
    assert kernels._build("lmzoo_cpu_test", build, ["-O3"]) == "module"
    assert time.time() - t0 < 10
    assert calls == [(False, str(build))]
