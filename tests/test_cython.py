"""The cimport API: a separate Cython extension (tests/cimport_user.pyx), compiled at test time
against the installed package's `_core.pxd` and `linux_clone.h`, calls the syscalls without the
GIL and runs C children with the C-level clone API.  The C headers compile warning-free on
their own."""

from __future__ import annotations

import errno
import importlib.util
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from types import ModuleType
from typing import Tuple

import pytest

import linux_clone
from conftest import in_child, ns_inode

pytest.importorskip("Cython", reason="the cimport test needs Cython (the `test` extra)")

HERE = Path(__file__).parent
PACKAGE_DIR = Path(linux_clone.__file__).parent
SOURCE_DIR = HERE.parent / "linux_clone"  # the private headers, which the wheel leaves out
SETNS_LOOPS = 10_000


def _compile(tmp: Path) -> ModuleType:
    """Cythonize and compile cimport_user.pyx as a user's build would, with only the
    installed package on the include paths (linux_clone.get_include() for C), and import it."""
    pyx = tmp / "cimport_user.pyx"
    pyx.write_bytes((HERE / "cimport_user.pyx").read_bytes())
    c_file = tmp / "cimport_user.c"
    subprocess.run([sys.executable, "-m", "cython", "-3", "-I", str(PACKAGE_DIR.parent),
                    "-o", str(c_file), str(pyx)],
                   check=True, capture_output=True, text=True, cwd=tmp)
    so = tmp / ("cimport_user" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run([*_cc(), "-shared", "-fPIC", "-O1", "-Wall",
                    "-Werror=implicit-function-declaration", "-I", sysconfig.get_paths()["include"],
                    "-I", linux_clone.get_include(), "-o", str(so), str(c_file)],
                   check=True, capture_output=True, text=True, cwd=tmp)
    spec = importlib.util.spec_from_file_location("cimport_user", so)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cc() -> list[str]:
    return shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")


@pytest.fixture(scope="module")
def ext(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    tmp = tmp_path_factory.mktemp("cimport")
    start = time.monotonic()
    try:
        module = _compile(tmp)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"building the cimport extension failed: {exc.cmd}\n{exc.stdout}\n"
                    f"{exc.stderr}")
    assert time.monotonic() - start < 60, "the cimport extension should build in seconds"
    return module


def test_wheel_ships_pxd_not_pyx() -> None:
    files = {p.name for p in PACKAGE_DIR.iterdir()}
    assert {"_core.pxd", "linux_clone.h"} <= files
    assert not [name for name in files if name.endswith(".pyx")], files
    assert not [name for name in files if name.startswith("_") and name.endswith(".h")], files
    assert Path(linux_clone.get_include()) == PACKAGE_DIR
    assert {"__init__.pyi", "py.typed"} <= files
    assert any(name.startswith("_core.") and name.endswith(sysconfig.get_config_var("EXT_SUFFIX"))
               for name in files)


def _compile_c(tmp: Path, source: Path, include: str, python: bool = False) -> None:
    """Compile one C file warning-free, as CI holds our headers to; Python's own headers (with
    `python`) are system headers, not ours to hold to -Wextra."""
    python_include = ["-isystem", sysconfig.get_paths()["include"]] if python else []
    try:
        subprocess.run([*_cc(), "-std=c99", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror",
                        *python_include, "-I", include, "-c", "-o", str(tmp / "header.o"),
                        str(source)],
                       check=True, capture_output=True, text=True, cwd=tmp)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"{shlex.join(exc.cmd)}\n{exc.stderr}")


def test_public_header_compiles_alone(tmp_path: Path) -> None:
    _compile_c(tmp_path, HERE / "public_header.c", linux_clone.get_include())


@pytest.mark.parametrize("header", ["_clone.h", "_spawn.h", "_entered.h"])
def test_private_header_compiles_alone(tmp_path: Path, header: str) -> None:
    if not (SOURCE_DIR / header).exists():
        pytest.skip("the private headers are in the source tree only")
    source = tmp_path / "header.c"
    source.write_text(f'#include "{header}"\nint main(void) {{ return 0; }}\n')
    _compile_c(tmp_path, source, str(SOURCE_DIR), python=True)


def test_constants_match_python_api(ext: ModuleType) -> None:
    for name, value in ext.constants().items():
        assert getattr(linux_clone, name) == value, name
    assert all(address != 0 for address in ext.helpers_linked())


def test_nogil_calls_without_privilege(ext: ModuleType) -> None:
    fd = os.open("/proc/self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert ext.nstype(fd) == linux_clone.NEWUTS
    finally:
        os.close(fd)
    assert ext.kcmp_vm(os.getpid(), os.getpid()) == 0
    assert ext.kcmp_vm(os.getpid(), os.getppid()) != 0
    with pytest.raises(OSError) as info:
        ext.nstype(-1)
    assert info.value.errno == errno.EBADF


def test_setns_loop_nogil(ext: ModuleType, privileged: None) -> None:
    def child() -> Tuple[int, int, int, int, int]:
        outer = os.open("/proc/self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
        ext.unshare(linux_clone.NEWUTS)
        inner = os.open("/proc/self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
        inner_ino = ns_inode("uts")
        ext.setns_loop(inner, outer, SETNS_LOOPS)  # an even count ends where it began
        after_even = ns_inode("uts")
        ext.setns_loop(inner, outer, 1)
        after_odd = ns_inode("uts")
        return (ext.nstype(inner), ext.kcmp_vm(os.getpid(), os.getpid()), inner_ino,
                after_even, after_odd)

    outer_ino = ns_inode("uts")
    nstype, same_vm, inner_ino, after_even, after_odd = in_child(child)
    assert nstype == linux_clone.CLONE_NEWUTS
    assert same_vm == 0
    assert inner_ino != outer_ino
    assert after_even == inner_ino
    assert after_odd == outer_ino
    assert ns_inode("uts") == outer_ino


def test_setns_loop_error(ext: ModuleType) -> None:
    fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(OSError) as info:
            ext.setns_loop(fd, fd, 3)  # a net namespace is not CLONE_NEWUTS
    finally:
        os.close(fd)
    assert info.value.errno == errno.EINVAL


def test_ns_get_owner_uid_and_pidfd(ext: ModuleType) -> None:
    fd = os.open("/proc/self/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert ext.owner_uid(fd) == linux_clone.ns_get_owner_uid(fd)
    finally:
        os.close(fd)
    pidfd = ext.pidfd_open(os.getpid())
    try:
        fdinfo = Path(f"/proc/self/fdinfo/{pidfd}").read_text()
        assert f"Pid:\t{os.getpid()}\n" in fdinfo
    finally:
        os.close(pidfd)


@pytest.mark.parametrize("exec_true", [False, True], ids=["exit", "execve"])
def test_c_clone_vfork_newuts(ext: ModuleType, privileged: None, exec_true: bool) -> None:
    name = b"c-level-child"

    def child() -> Tuple[int, bytes, int, str]:
        pid, seen = ext.clone_sethostname(name, exec_true)
        _, status = os.waitpid(pid, 0)
        return pid, seen, status, socket.gethostname()

    before = socket.gethostname()
    pid, seen, status, hostname_after = in_child(child)
    assert pid > 0
    assert seen == name  # written by the child into the memory it shares with the parent
    assert os.WIFEXITED(status)
    assert os.WEXITSTATUS(status) == (0 if exec_true else 7)
    assert hostname_after == before
    assert socket.gethostname() == before


needs_clone3_fn = pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"),
                                     reason="sys_clone3_fn is x86-64 and aarch64 only "
                                            "(ENOSYS elsewhere)")


def _clone3_or_skip(ext: ModuleType, *args: object) -> Tuple[int, int, int]:
    try:
        return ext.clone3_fn(*args)  # type: ignore[no-any-return]
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            pytest.skip("the kernel has no clone3 (before Linux 5.3)")
        raise


@needs_clone3_fn
def test_c_clone3_newpid(ext: ModuleType, privileged: None) -> None:
    def child() -> Tuple[int, int, int]:
        pid, seen, _ = _clone3_or_skip(ext, linux_clone.NEWPID, signal.SIGCHLD, False)
        _, status = os.waitpid(pid, 0)
        return pid, seen, status

    pid, seen, status = in_child(child)
    assert pid > 1
    assert seen == 1
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1


@needs_clone3_fn
def test_c_clone3_pidfd(ext: ModuleType) -> None:
    def child() -> Tuple[int, int, int, str, int]:
        pid, seen, pidfd = _clone3_or_skip(ext, 0, signal.SIGCHLD, True)
        fdinfo = Path(f"/proc/self/fdinfo/{pidfd}").read_text()
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
        assert info is not None
        ext.close_fd(pidfd)
        return pid, seen, info.si_pid, fdinfo, info.si_status

    pid, seen, waited_pid, fdinfo, status = in_child(child)
    assert pid == seen  # no new pid namespace: the child saw the pid the parent got
    assert waited_pid == pid
    assert status == pid & 0xFF
    assert f"Pid:\t{pid}\n" in fdinfo


@needs_clone3_fn
def test_c_clone3_no_exit_signal_needs_wall(ext: ModuleType) -> None:
    def child() -> Tuple[int, int]:
        pid, _, _ = _clone3_or_skip(ext, 0, 0, False)
        waited, status = os.waitpid(pid, linux_clone.WALL)
        return waited - pid, status

    delta, status = in_child(child)
    assert delta == 0
    assert os.WIFEXITED(status)
