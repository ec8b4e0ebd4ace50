"""sys_clone3_fn's assembly on each architecture: tests/c/clone3_fn_test.c built with -O0, -O2
and -O3 (register allocation differs) and run natively, and cross-built for aarch64 and run
under qemu: user-mode emulation where it has clone3, and an arm64 kernel in
qemu-system-aarch64 (LINUX_CLONE_ARM64_KERNEL, e.g. Debian's linux-image-arm64 vmlinuz)."""

from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

import linux_clone

C_DIR = Path(__file__).parent / "c"
OPTS = ["-O0", "-O2", "-O3"]
CROSS_CC = "aarch64-linux-gnu-gcc"
NO_CLONE3 = 77  # clone3_fn_test's exit status when clone3 answers ENOSYS


def _build(cc: str, opt: str, out: Path, source: str = "clone3_fn_test.c") -> Path:
    # The code under test is the installed package's public header.
    run = subprocess.run([cc, "-static", opt, "-Wall", "-Wextra", "-Werror",
                          "-I", linux_clone.get_include(), "-o", str(out), str(C_DIR / source)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return out


def _need(*commands: str) -> None:
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian: gcc-aarch64-linux-gnu, "
                    "qemu-user-static, qemu-system-arm)")


def _check_output(out: str) -> None:
    assert not [line for line in out.splitlines() if line.startswith("FAIL ")], out
    assert "\n0 failed\n" in "\n" + out, out


@pytest.mark.parametrize("opt", OPTS)
def test_clone3_fn_native(opt: str, tmp_path: Path) -> None:
    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip(f"sys_clone3_fn has no assembly for {platform.machine()}")
    _need("gcc")
    exe = _build("gcc", opt, tmp_path / "t")
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    if run.returncode == NO_CLONE3:
        pytest.skip("the kernel has no clone3 (before Linux 5.3)")
    assert run.returncode == 0, run.stdout + run.stderr
    _check_output(run.stdout)


@pytest.mark.parametrize("opt", OPTS)
def test_clone3_fn_aarch64_user(opt: str, tmp_path: Path) -> None:
    """Builds with the aarch64 assembly; under qemu-aarch64 without clone3 (QEMU 7.2 answers
    ENOSYS) this checks the error path: -ENOSYS in x0 becomes -1 and errno.  Legacy clone is
    left out: QEMU emulates it rather than passing it to the kernel."""
    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    _need(CROSS_CC)
    exe = _build(CROSS_CC, opt, tmp_path / "t")
    if qemu is None:
        pytest.skip("built; running needs qemu-aarch64 (Debian: qemu-user-static)")
    run = subprocess.run([qemu, str(exe), "clone3"], capture_output=True, text=True,
                         timeout=120)
    if run.returncode == NO_CLONE3:
        assert run.stdout.startswith("SKIP clone3: Function not implemented"), run.stdout
        return
    assert run.returncode == 0, run.stdout + run.stderr
    _check_output(run.stdout)


def _cpio_newc(files: List[Tuple[str, bytes, int]]) -> bytes:
    """An initramfs of regular files: (name, data, mode) in the kernel's "newc" cpio format."""
    out = bytearray()
    for ino, (name, data, mode) in enumerate(files + [("TRAILER!!!", b"", 0)], 1):
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def _arm64_kernel() -> Optional[str]:
    kernel = os.environ.get("LINUX_CLONE_ARM64_KERNEL")
    if kernel:
        return kernel
    found = sorted(glob.glob("/boot/vmlinuz-*-arm64"))
    return found[-1] if found else None


@pytest.mark.timeout(600)
def test_clone3_fn_aarch64_vm(tmp_path: Path) -> None:
    """The C test as the programs of /init on an arm64 kernel in qemu-system-aarch64 (TCG,
    about 5 s on an idle x86-64 host)."""
    _need(CROSS_CC, "qemu-system-aarch64")
    kernel = _arm64_kernel()
    if kernel is None:
        pytest.skip("needs an arm64 kernel image: set LINUX_CLONE_ARM64_KERNEL (Debian: "
                    "the vmlinuz of linux-image-arm64, arch arm64)")
    files = [("init", _build(CROSS_CC, "-O2", tmp_path / "init", "qemu_init.c").read_bytes(),
              0o100755)]
    for opt in OPTS:
        files.append((f"t{opt}", _build(CROSS_CC, opt, tmp_path / f"t{opt}").read_bytes(),
                      0o100755))
    initrd = tmp_path / "initrd.cpio"
    initrd.write_bytes(_cpio_newc(files))
    programs = " ".join(f"/t{opt}" for opt in OPTS)
    run = subprocess.run(
        ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-m", "512",
         "-nographic", "-no-reboot", "-kernel", kernel, "-initrd", str(initrd),
         "-append", f"console=ttyAMA0 panic=-1 quiet -- {programs}"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
        timeout=540)
    out = run.stdout.replace("\r", "")
    for opt in OPTS:
        assert f"qemu_init: /t{opt} exit status 0\n" in out, out
    _check_output(out)

