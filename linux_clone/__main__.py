"""python -m linux_clone: run a program with some namespaces unshared, as util-linux 2.38
unshare(1) does (its options, messages and exit codes), plus --loopback and --hostname."""

from __future__ import annotations

import os
import sys

from . import configure_loopback, unshare

# signal.py builds three enums at import, typing pulls in re, the package makes CloneFlag (an
# enum) on first use: only type checkers read these, the interpreter takes the same values
# from _signal and the flags as plain ints from _core.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Iterator
    from typing import Any, Callable, Dict, List, NoReturn, Optional, Set, Tuple

    from . import NEWCGROUP, NEWIPC, NEWNET, NEWNS, NEWPID, NEWTIME, NEWUSER, NEWUTS
else:
    import _signal as signal

    from ._core import CLONE_FLAGS

    NEWCGROUP, NEWIPC, NEWNET, NEWNS, NEWPID, NEWTIME, NEWUSER, NEWUTS = (
        CLONE_FLAGS[name] for name in ("NEWCGROUP", "NEWIPC", "NEWNET", "NEWNS", "NEWPID",
                                       "NEWTIME", "NEWUSER", "NEWUTS"))

PROG = "linux_clone"
# option: (short option, CLONE_NEW*, the /proc/<pid>/ file a --<option>=FILE bind-mounts)
NAMESPACES = {
    "mount": ("m", NEWNS, "ns/mnt"), "uts": ("u", NEWUTS, "ns/uts"),
    "ipc": ("i", NEWIPC, "ns/ipc"), "net": ("n", NEWNET, "ns/net"),
    "pid": ("p", NEWPID, "ns/pid_for_children"), "user": ("U", NEWUSER, "ns/user"),
    "cgroup": ("C", NEWCGROUP, "ns/cgroup"), "time": ("T", NEWTIME, "ns/time_for_children"),
}
# Long options in unshare(1)'s order (getopt lists ambiguous prefixes in it): 0 no argument,
# 1 a required one, 2 an optional one (--name=VALUE only).
LONG = {"help": 0, "version": 0, **{name: 2 for name in NAMESPACES}, "fork": 0,
        "kill-child": 2, "mount-proc": 2, "map-user": 1, "map-users": 1, "map-group": 1,
        "map-groups": 1, "map-root-user": 0, "map-current-user": 0, "map-auto": 0,
        "propagation": 1, "setgroups": 1, "keep-caps": 0, "setuid": 1, "setgid": 1, "root": 1,
        "wd": 1, "monotonic": 1, "boottime": 1, "loopback": 0, "hostname": 1}
# Ours, matched in full only: an abbreviation means what it means to unshare(1) (--h is
# --help, --lo unrecognized).
EXTENSIONS = {"loopback", "hostname"}
SHORT = {"f": "fork", "h": "help", "V": "version", "r": "map-root-user", "R": "root",
         "w": "wd", "S": "setuid", "G": "setgid", "c": "map-current-user",
         **{short: name for name, (short, _, _) in NAMESPACES.items()}}
# <sys/mount.h>
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC = 0x2, 0x4, 0x8, 0x1000, 0x4000
MS_PRIVATE, MS_SLAVE, MS_SHARED = 0x40000, 0x80000, 0x100000
PROPAGATION = {"slave": MS_REC | MS_SLAVE, "private": MS_REC | MS_PRIVATE,
               "shared": MS_REC | MS_SHARED, "unchanged": 0}
CLOCK_MONOTONIC, CLOCK_BOOTTIME = 1, 7  # <time.h>
# <linux/prctl.h>
PR_SET_PDEATHSIG, PR_CAPBSET_READ, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 1, 23, 47, 2
# Python ignores these at start-up; a command expects the default, as subprocess's
# restore_signals gives it (SIGXFZ exists on some systems only).
PYTHON_IGNORED = [getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ")
                  if hasattr(signal, name)]
# Blocked while we wait, so that none of them ends the wait and leaves COMMAND running
# unseen: SIGINT and SIGTERM as unshare --fork blocks them, SIGQUIT as system() ignores it (a
# terminal sends ^C and ^\ to COMMAND too), SIGHUP as a hang-up reaches COMMAND as well.
WAIT_SIGNALS: Set[int] = {signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP}

USAGE = f"""
Usage:
 python -m {PROG} [options] [<program> [<argument>...]]

Run a program with some namespaces unshared from the parent, as unshare(1) does.

Options:
 -m, --mount[=<file>]      unshare mounts namespace
 -u, --uts[=<file>]        unshare UTS namespace (hostname etc)
 -i, --ipc[=<file>]        unshare System V IPC namespace
 -n, --net[=<file>]        unshare network namespace
 -p, --pid[=<file>]        unshare pid namespace
 -U, --user[=<file>]       unshare user namespace
 -C, --cgroup[=<file>]     unshare cgroup namespace
 -T, --time[=<file>]       unshare time namespace

 -f, --fork                fork before launching <program>
 --map-user=<uid>|<name>   map current user to uid (implies --user)
 --map-group=<gid>|<name>  map current group to gid (implies --user)
 -r, --map-root-user       map current user to root (implies --user)
 -c, --map-current-user    map current user to itself (implies --user)
 --map-auto                map users and groups automatically (implies --user)
 --map-users=<outeruid>,<inneruid>,<count>
                           map count users from outeruid to inneruid (implies --user)
 --map-groups=<outergid>,<innergid>,<count>
                           map count groups from outergid to innergid (implies --user)

 --kill-child[=<signame>]  when dying, kill the forked child (implies --fork)
                             defaults to SIGKILL
 --mount-proc[=<dir>]      mount proc filesystem first (implies --mount)
 --propagation slave|shared|private|unchanged
                           modify mount propagation in mount namespace
 --setgroups allow|deny    control the setgroups syscall in user namespaces
 --keep-caps               retain capabilities granted in user namespaces

 -R, --root=<dir>          run the command with root directory set to <dir>
 -w, --wd=<dir>            change working directory to <dir>
 -S, --setuid <uid>        set uid in entered namespace
 -G, --setgid <gid>        set gid in entered namespace
 --monotonic <offset>      set clock monotonic offset (seconds) in time namespaces
 --boottime <offset>       set clock boottime offset (seconds) in time namespaces

 --loopback                bring up lo in the new network namespace (implies --net)
 --hostname <name>         set the hostname in the new UTS namespace (implies --uts)

 -h, --help                display this help
 -V, --version             display version

With --fork, SIGINT, SIGTERM, SIGQUIT and SIGHUP do not end the wait for <program>."""


class Failure(Exception):
    """What unshare(1) reports with err() (with an errno) or errx() (without), and exits."""

    def __init__(self, message: str, error: Optional[int] = None, status: int = 1) -> None:
        super().__init__(message)
        self.message, self.error, self.status = message, error, status

    def report(self) -> int:
        text = f"{PROG}: {self.message}"
        if self.error is not None:
            text += f": {os.strerror(self.error)}"
        if self.message and not say(text):  # else a helper has said it
            return 1
        return self.status


class Usage(Failure):
    """A bad command line, in glibc getopt's words."""

    def report(self) -> int:
        say(f"{PROG}: {self.message}\nTry 'python -m {PROG} --help' for more information.")
        return 1  # also when it was not written


def say(text: str) -> bool:
    """Write a line to stderr, a byte of the command line that is not UTF-8 as that byte
    (as unshare(1) writes it), not as the escape of its surrogate.  Return whether it was
    written: as util-linux's close_stdout() at exit, a message that was not makes the exit
    status 1.  With sys.stderr None (fd 2 closed when Python started) it is dropped, never
    written to stdout as print() would, nor to an fd 2 that may be one of our own pipes by
    now."""
    stream = sys.stderr
    if stream is None:
        return False
    try:
        buffer = getattr(stream, "buffer", None)
        if buffer is None:  # a stream without bytes under it
            print(text, file=stream)
            stream.flush()
            return True
        stream.flush()
        buffer.write(os.fsencode(text + "\n"))
        buffer.flush()
    except OSError:  # 2>/dev/full, a closed pipe
        return False
    return True


def getopt(argv: List[str], rest: List[str]) -> Iterator[Tuple[str, Optional[str]]]:
    """Yield (long option name, value or None) as getopt_long(3) with "+" does: options stop
    at the first non-option or after "--"; long options may be abbreviated.  What follows
    goes to rest."""
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            matches = [name] if name in LONG else [n for n in LONG if n.startswith(name)
                                                   and n not in EXTENSIONS]
            if not matches:
                raise Usage(f"unrecognized option '{arg}'")
            if len(matches) > 1:
                raise Usage(f"option '{arg}' is ambiguous; possibilities:"
                            + "".join(f" '--{n}'" for n in matches))
            name = matches[0]
            if eq and not LONG[name]:
                raise Usage(f"option '--{name}' doesn't allow an argument")
            if LONG[name] == 1 and not eq:
                if i == len(argv):
                    raise Usage(f"option '--{name}' requires an argument")
                value, eq = argv[i], "="
                i += 1
            yield name, value if eq else None
            continue
        for j in range(1, len(arg)):
            name = SHORT.get(arg[j], "")
            if not name:
                raise Usage(f"invalid option -- '{arg[j]}'")
            if LONG[name] != 1:
                yield name, None
                continue
            if j + 1 < len(arg):
                yield name, arg[j + 1:]
            elif i < len(argv):
                yield name, argv[i]
                i += 1
            else:
                raise Usage(f"option requires an argument -- '{arg[j]}'")
            break
    rest.extend(argv[i:])


def strtoul(text: str, what: str) -> int:
    """C's strtoul(text, 10) of all of text, as util-linux's strtoul_or_err: "-1" is 2**64-1."""
    digits = text.lstrip(" \t\n\v\f\r")
    negative = digits[:1] == "-"
    digits = digits[1:] if digits[:1] in "+-" else digits
    if not digits.isdigit() or not digits.isascii():
        raise Failure(f"{what}: '{text}'")
    value = int(digits)
    if value >= 1 << 64:
        raise Failure(f"{what}: '{text}'", 34)  # ERANGE
    return -value % (1 << 64) if negative else value


def to_time_t(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def user_id(text: str, database: str) -> int:
    """A user (group) name, else a number, as unshare(1)'s get_user (get_group)."""
    import grp
    import pwd
    try:
        return pwd.getpwnam(text).pw_uid if database == "uid" else grp.getgrnam(text).gr_gid
    except KeyError:
        return strtoul(text, f"failed to parse {database}") & 0xFFFFFFFF


def signal_number(name: str) -> int:
    """util-linux's signame_to_signum: HUP, SIGHUP, sigterm, RTMIN+2, RT2, RTMAX-1."""
    bare = name[3:] if name[:3].lower() == "sig" else name
    if bare[:2].lower() == "rt":
        rest, top = bare[2:], bare[2:6].lower() == "max-"
        if rest[:4].lower() in ("min+", "max-"):
            rest = rest[4:]
        digits = rest[:len(rest) - len(rest.lstrip("0123456789"))]
        if digits:
            signum = signal.SIGRTMAX - int(digits) if top else signal.SIGRTMIN + int(digits)
            if signal.SIGRTMIN <= signum <= signal.SIGRTMAX:
                return signum
    elif bare.isalnum() and isinstance(getattr(signal, "SIG" + bare.upper(), None), int):
        return int(getattr(signal, "SIG" + bare.upper()))
    raise Failure(f"unknown signal: {name}")


def id_range(text: str) -> Tuple[int, int, int]:
    """OUTER,INNER,COUNT, split as util-linux's string_to_idarray does."""
    ids: List[int] = []
    begin: Optional[int] = None
    for p, char in enumerate(text):
        if len(ids) == 3:
            break
        begin = p if begin is None else begin
        end = p + 1 if p + 1 == len(text) else p if char == "," else None
        if end is None:
            continue
        if end <= begin:
            break
        ids.append(strtoul(text[begin:end], "could not parse ID") & 0xFFFFFFFF)
        if ids[-1] == 0xFFFFFFFF:  # util-linux's string_to_idarray takes it for an error
            break
        begin = None
    else:
        if len(ids) < 3 and text:
            raise Failure(f"mapping '{text}' contains only {len(ids)} elements")
        if text:
            return ids[0], ids[1], ids[2]
    raise Failure(f"too many elements for mapping '{text}'")


def subid_range(path: str, uid: int) -> Tuple[int, int, int]:
    """The first range of /etc/subuid (/etc/subgid) for uid, by name or number, mapped to 0."""
    import pwd
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        raise Failure(f"you (user {uid}) don't exist.") from None
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise Failure(f"could not open '{path}'", exc.errno) from None
    for line in lines:
        fields = line.split(":")
        if len(fields) >= 3 and (fields[0] == name or fields[0] == str(uid)):
            return (strtoul(fields[1], "failed to parse subid map"),
                    0, strtoul(fields[2], "failed to parse subid map"))
    raise Failure(f'no line matching user "{name}" in {path}', 0)


def idmapper_argv(program: str, pid: int, outer: int, inner: Optional[int],
                  idmap: Tuple[int, int, int]) -> List[str]:
    """newuidmap/newgidmap's command line, as unshare(1)'s map_ids() builds it: our id as
    inner (if given) and the range, the range split around both so that none overlap."""
    map_outer, map_inner, count = idmap
    if inner is None:
        return [program, str(pid), str(map_inner), str(map_outer), str(count)]
    if map_outer <= outer <= map_outer + count or map_inner <= inner <= map_inner + count:
        count -= 1
    outer_offset = min(max(outer - map_outer, 0), count)
    inner_offset = min(max(inner - map_inner, 0), count)
    low = (map_outer, map_inner, min(inner_offset, outer_offset))
    mid_outer, mid_inner = low[0] + low[2], low[1] + low[2]
    mid = (mid_outer + (mid_outer == outer), mid_inner + (mid_inner == inner),
           abs(outer_offset - inner_offset))
    high_outer, high_inner = mid[0] + mid[2], mid[1] + mid[2]
    high = (high_outer + (high_outer == outer), high_inner + (high_inner == inner),
            count - low[2] - mid[2])
    argv = [program, str(pid), str(inner), str(outer), "1"]
    for o, i, n in (low, mid, high):
        if n:  # new[gu]idmap refuses empty ranges
            argv += [str(i), str(o), str(n)]
    return argv


class Options:
    """What unshare(1)'s main() collects from its command line."""

    def __init__(self) -> None:
        self.flags = 0
        self.fork = False
        self.persist: Dict[str, str] = {}
        self.map_user: Optional[int] = None
        self.map_group: Optional[int] = None
        self.usermap: Optional[Tuple[int, int, int]] = None  # (outer, inner, count)
        self.groupmap: Optional[Tuple[int, int, int]] = None
        self.kill_child = 0
        self.proc: Optional[str] = None
        self.propagation = MS_REC | MS_PRIVATE
        self.setgroups: Optional[str] = None
        self.keep_caps = False
        self.uid: Optional[int] = None
        self.gid: Optional[int] = None
        self.root: Optional[str] = None
        self.wd: Optional[str] = None
        self.offsets: Dict[int, int] = {}
        self.loopback = False
        self.hostname: Optional[str] = None
        self.command: List[str] = []


def parse_args(argv: List[str]) -> Options:
    """Options from the command line; a bad one raises Usage or Failure, --help and
    --version print and raise SystemExit(0) -- each as soon as it is seen, as unshare(1)."""
    opts = Options()
    real_uid, real_gid = os.geteuid(), os.getegid()
    for name, arg in getopt(argv, opts.command):
        value = "" if arg is None else arg
        if name in NAMESPACES:
            opts.flags |= NAMESPACES[name][1]
            if arg is not None:
                opts.persist[name] = value
        elif name == "fork":
            opts.fork = True
        elif name == "mount-proc":
            opts.flags |= NEWNS
            opts.proc = "/proc" if arg is None else value
        elif name.startswith("map-"):
            opts.flags |= NEWUSER
            # (uid_t)-1 is unshare(1)'s "no map": the command runs unmapped, as nobody.
            if name == "map-user":
                opts.map_user = user_id(value, "uid")
                opts.map_user = None if opts.map_user == 0xFFFFFFFF else opts.map_user
            elif name == "map-group":
                opts.map_group = user_id(value, "gid")
                opts.map_group = None if opts.map_group == 0xFFFFFFFF else opts.map_group
            elif name == "map-root-user":
                opts.map_user, opts.map_group = 0, 0
            elif name == "map-current-user":
                opts.map_user, opts.map_group = real_uid, real_gid
            elif name == "map-auto":
                opts.usermap = subid_range("/etc/subuid", real_uid)
                opts.groupmap = subid_range("/etc/subgid", real_uid)
            else:
                idmap = (subid_range(f"/etc/sub{name[4]}id", real_uid) if value == "auto"
                         else id_range(value))
                if name == "map-users":
                    opts.usermap = idmap
                else:
                    opts.groupmap = idmap
        elif name == "setgroups":
            if value not in ("allow", "deny"):
                raise Failure(f"unsupported --setgroups argument '{value}'")
            opts.setgroups = value
        elif name == "propagation":
            if value not in PROPAGATION:
                raise Failure(f"unsupported propagation mode: {value}")
            opts.propagation = PROPAGATION[value]
        elif name == "kill-child":
            opts.fork = True
            opts.kill_child = signal.SIGKILL if arg is None else signal_number(value)
        elif name == "keep-caps":
            opts.keep_caps = True
        elif name in ("setuid", "setgid"):
            number = strtoul(value, f"failed to parse {name[3:]}") & 0xFFFFFFFF
            if name == "setuid":
                opts.uid = number
            else:
                opts.gid = number
        elif name == "root":
            opts.root = value
        elif name == "wd":
            opts.wd = value
        elif name in ("monotonic", "boottime"):
            clock = CLOCK_MONOTONIC if name == "monotonic" else CLOCK_BOOTTIME
            opts.offsets[clock] = to_time_t(strtoul(value, f"failed to parse {name} offset"))
        elif name == "loopback":
            opts.flags |= NEWNET
            opts.loopback = True
        elif name == "hostname":
            opts.flags |= NEWUTS
            opts.hostname = value
        elif name == "help":
            print_out(USAGE)
            raise SystemExit(0)
        elif name == "version":
            from . import __version__  # what pyproject.toml reads; importlib.metadata is slow
            print_out(f"{PROG} from linux_clone {__version__}")
            raise SystemExit(0)
    if opts.offsets and not opts.flags & NEWTIME:
        raise Failure("options --monotonic and --boottime require unsharing of a time "
                      "namespace (-t)")
    return opts


def print_out(text: str) -> None:
    """print to stdout and flush: as util-linux's close_stdout(), output that cannot be
    written (a full disk) is an error; with fd 1 closed at start-up (sys.stdout None), as
    for unshare(1), it is not."""
    try:
        print(text)
        if sys.stdout is not None:
            sys.stdout.flush()
    except OSError as exc:
        raise Failure("write error", exc.errno) from None


def flush_std() -> None:
    """Flush sys.stdout and sys.stderr before a fork: None when fd 1 (2) was closed when
    Python started, as a command run with 1>&- finds it."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()


def child_exit(status: int) -> NoReturn:
    """End a forked child (never returning into the parent's code): what it said is
    written first."""
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    finally:
        os._exit(status)


def child_main(body: Callable[[], int]) -> NoReturn:
    """Run a forked child's body and end the child with its status: a Failure's own status
    (it says why), 1 after any other exception (the traceback is printed)."""
    status = 1
    try:
        status = body()
    except Failure as failure:
        status = failure.report()
    except BaseException:
        sys.excepthook(*sys.exc_info())
    finally:
        child_exit(status)


def libc() -> Any:
    import ctypes
    return ctypes.CDLL(None, use_errno=True)


def mount(source: str, target: str, fstype: Optional[str], flags: int, message: str) -> None:
    import ctypes
    if libc().mount(source.encode(), target.encode(), fstype and fstype.encode(),
                    ctypes.c_ulong(flags), None) == -1:
        raise Failure(message, ctypes.get_errno())


def write_file(path: str, text: str, message: str, missing_ok: bool = False) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        if missing_ok and exc.errno == 2:  # ENOENT: a kernel without the file
            return
        raise Failure(f"cannot open {path}", exc.errno) from None
    try:
        os.write(fd, text.encode())
    except OSError as exc:
        raise Failure(message, exc.errno) from None
    finally:
        os.close(fd)


# The order of unshare(1)'s namespace_files[], which a failed bind mount shows: the ones
# before it are mounted.
BIND_ORDER = ["user", "cgroup", "ipc", "uts", "net", "pid", "mount", "time"]


def bind_ns_files(opts: Options, pid: int) -> None:
    for name in sorted(opts.persist, key=BIND_ORDER.index):
        target = opts.persist[name]
        source = f"/proc/{pid}/{NAMESPACES[name][2]}"
        mount(source, target, None, MS_BIND, f"mount {source} on {target} failed")


def start_helper(work: Callable[[], None]) -> Tuple[int, int]:
    """A child that calls work() once told to by sync_with_helper (after our unshare), then
    exits, 1 with a message if it raised Failure: (its pid, the fd to tell it by)."""
    rfd, wfd = os.pipe()
    flush_std()
    pid = os.fork()
    if pid:
        os.close(rfd)
        return pid, wfd

    def helper() -> int:
        os.close(wfd)
        if not os.read(rfd, 1):
            return 1
        work()
        return 0
    child_main(helper)


def sync_with_helper(helper: Tuple[int, int], go: bool = True) -> None:
    """Tell the helper to go on (or, go=False, to exit) and wait for it; its failure (it has
    said why) is ours."""
    pid, fd = helper
    try:
        if go:
            os.write(fd, b"\x06")
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    if go and os.WIFEXITED(status) and os.WEXITSTATUS(status):
        raise Failure("", None, os.WEXITSTATUS(status))


def start_binder(opts: Options) -> Tuple[int, int]:
    """A helper that bind-mounts our namespace files from the mount namespace we are
    leaving (a mount namespace file cannot be bound inside itself)."""
    parent = os.getpid()
    path = f"/proc/{parent}/ns/mnt"
    try:
        inode = os.stat(path).st_ino
    except OSError as exc:
        raise Failure(f"stat of {path} failed", exc.errno) from None

    def bind() -> None:
        if os.stat(path).st_ino == inode:
            raise Failure("", None, 1)
        bind_ns_files(opts, parent)

    return start_helper(bind)


def start_idmapper(opts: Options, real_uid: int, real_gid: int) -> Tuple[int, int]:
    """A helper that writes our id ranges with shadow's setuid newuidmap and newgidmap, as
    unshare(1) does (both at once: one in a child of the helper)."""
    parent = os.getpid()

    def run(program: str, outer: int, inner: Optional[int],
            idmap: Tuple[int, int, int]) -> None:
        argv = idmapper_argv(program, parent, outer, inner, idmap)
        try:
            os.execvp(program, argv)
        except OSError as exc:
            raise Failure(f"failed to execute {program}", exc.errno,
                          127 if exc.errno == 2 else 126) from None

    def write_maps() -> None:
        usermap, groupmap = opts.usermap, opts.groupmap
        if usermap and groupmap:
            sync_with_helper(start_helper(
                lambda: run("newuidmap", real_uid, opts.map_user, usermap)))
        elif usermap:
            run("newuidmap", real_uid, opts.map_user, usermap)
        if groupmap:
            run("newgidmap", real_gid, opts.map_group, groupmap)

    return start_helper(write_maps)


def keep_caps() -> None:
    """Make the permitted capabilities inheritable and ambient, so that they survive exec."""
    import ctypes
    c = libc()
    # struct __user_cap_header_struct {version, pid}, then two of struct
    # __user_cap_data_struct {effective, permitted, inheritable}.
    header, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
    if c.capget(header, data) < 0:
        raise Failure("capget failed", ctypes.get_errno())
    data[2], data[5] = data[1], data[4]
    if c.capset(header, data) < 0:
        raise Failure("capset failed", ctypes.get_errno())
    effective = data[3] << 32 | data[0]
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except OSError:  # no /proc (after --root): as util-linux, ask the bounding set
        last = 0
        while c.prctl(PR_CAPBSET_READ, ctypes.c_ulong(last + 1), 0, 0, 0) >= 0:
            last += 1
    for cap in range(last + 1):
        if effective >> cap & 1 and c.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE,
                                            ctypes.c_ulong(cap), 0, 0) < 0:
            raise Failure("prctl(PR_CAP_AMBIENT) failed", ctypes.get_errno())


def execvp(argv: List[str]) -> None:
    """os.execvp, with glibc execvp's fallback that unshare(1) has: a file the kernel cannot
    run (ENOEXEC: a script without #!) runs under /bin/sh."""
    if not argv[0]:
        # glibc's execvp fails with ENOENT; os.execvp raises ValueError for an empty argv[0].
        raise OSError(2, os.strerror(2), argv[0])  # ENOENT
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        if exc.errno != 8:  # ENOEXEC
            raise
        failure = exc
    candidates = ([argv[0]] if "/" in argv[0]
                  else [os.path.join(d, argv[0]) for d in os.get_exec_path()])
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            os.execv("/bin/sh", ["/bin/sh", path, *argv[1:]])
    raise failure


def become_command(opts: Options, real_uid: int, real_gid: int) -> None:
    """Set up the namespaces from inside, as unshare(1) does after its fork (or without one),
    then exec the command; raise Failure if a step fails."""
    for signum in PYTHON_IGNORED:
        signal.signal(signum, signal.SIG_DFL)
    if opts.map_user is not None and not opts.usermap:
        write_file("/proc/self/uid_map", f"{opts.map_user} {real_uid} 1",
                   "write failed /proc/self/uid_map")
    if opts.map_group is not None and not opts.groupmap:
        if opts.setgroups == "allow":
            raise Failure("options --setgroups=allow and --map-group are mutually exclusive")
        # Since Linux 3.19 an unprivileged gid_map needs setgroups denied first.
        write_file("/proc/self/setgroups", "deny", "write failed /proc/self/setgroups", True)
        write_file("/proc/self/gid_map", f"{opts.map_group} {real_gid} 1",
                   "write failed /proc/self/gid_map")
    if opts.setgroups is not None:
        write_file("/proc/self/setgroups", opts.setgroups, "write failed /proc/self/setgroups",
                   True)
    if opts.flags & NEWNS and opts.propagation:
        # Where / is shared (systemd makes it so), mounts made in the new namespace would
        # otherwise propagate back to the one we came from.
        mount("none", "/", None, opts.propagation, "cannot change root filesystem propagation")
    if opts.root is not None or opts.uid is not None or opts.gid is not None:
        # os.execvp imports warnings on first use (3.12+), --keep-caps ctypes, --hostname
        # socket: after a chroot or a change of uid the standard library may be out of reach.
        import warnings  # noqa: F401
        if opts.keep_caps:
            import ctypes  # noqa: F401
        if opts.hostname is not None:
            import socket  # noqa: F401
    wd = opts.wd
    if opts.root is not None:
        try:
            os.chroot(opts.root)
        except OSError as exc:
            raise Failure(f"cannot change root directory to '{opts.root}'",
                          exc.errno) from None
        wd = wd or "/"
    if wd is not None:
        try:
            os.chdir(wd)
        except OSError as exc:
            raise Failure(f"cannot chdir to '{wd}'", exc.errno) from None
    if opts.proc is not None:
        if opts.root is None and opts.propagation != MS_REC | MS_PRIVATE:
            try:
                mount("none", opts.proc, None, MS_REC | MS_PRIVATE, "")
            except Failure as failure:
                if failure.error != 22:  # EINVAL: nothing mounted there yet
                    raise Failure(f"cannot change {opts.proc} filesystem propagation",
                                  failure.error) from None
        mount("proc", opts.proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              f"mount {opts.proc} failed")
    try:
        if opts.loopback:
            configure_loopback()
        if opts.hostname is not None:
            import socket
            socket.sethostname(opts.hostname)
    except OSError as exc:
        what = "set the hostname" if opts.hostname is not None else "bring up lo"
        raise Failure(f"cannot {what}", exc.errno) from None
    for which, ask in (("gid", opts.gid), ("uid", opts.uid)):
        if ask is None:
            continue
        try:
            if which == "gid":
                step = "setgroups"
                os.setgroups([])
                step = "setgid"
                os.setgid(ask)
            else:
                step = "setuid"
                os.setuid(ask)
        except OSError as exc:
            raise Failure(f"{step} failed", exc.errno) from None
    if opts.keep_caps and opts.flags & NEWUSER:
        keep_caps()
    argv = opts.command or [os.environ.get("SHELL", "/bin/sh")]
    try:
        if opts.command:
            execvp(argv)
        # As unshare(1): a login shell, by its path (no PATH search).
        os.execv(argv[0], ["-" + os.path.basename(argv[0])])
    except OSError as exc:
        raise Failure(f"failed to execute {argv[0]}", exc.errno,
                      127 if exc.errno == 2 else 126) from None  # ENOENT


def run(opts: Options) -> int:
    """unshare(1)'s main() after its options: unshare here, fork if asked, set up, exec.
    Return the command's exit status (-N: killed by signal N) when we forked.  On a failure
    or an exception, the helpers and the forked child are reaped and the signal mask is the
    caller's again (main() may have been called in-process)."""
    real_uid, real_gid = os.geteuid(), os.getegid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # an inherited SIG_IGN would reap COMMAND
    helpers: List[Tuple[int, int]] = []  # started and not yet told to go
    pid = 0
    mask: Optional[Set[int]] = None
    try:
        binder = start_binder(opts) if opts.persist and opts.flags & NEWNS else None
        if binder is not None:
            helpers.append(binder)
        idmapper = (start_idmapper(opts, real_uid, real_gid) if opts.usermap or opts.groupmap
                    else None)
        if idmapper is not None:
            helpers.append(idmapper)
        try:
            unshare(opts.flags)
        except OSError as exc:
            raise Failure("unshare failed", exc.errno) from None
        if idmapper is not None:
            helpers.remove(idmapper)
            sync_with_helper(idmapper)
        for clock, offset in sorted(opts.offsets.items(), reverse=True):
            write_file("/proc/self/timens_offsets", f"{clock} {offset} 0",
                       "failed to write to /proc/self/timens_offsets")
        if opts.fork:
            # Blocked before the fork, so that the child starts with them blocked too and
            # unblocks them once it is ready to become COMMAND.
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, WAIT_SIGNALS)
            flush_std()
            if opts.kill_child:
                # Loaded before the fork, so that the child's first act is to ask for its
                # death signal: a CLI killed in between would leave COMMAND running unseen.
                import ctypes
                prctl, parent = libc().prctl, os.getpid()
                death_signal = ctypes.c_ulong(opts.kill_child)
            pid = os.fork()
            if pid == 0:
                def command() -> int:
                    if opts.kill_child:
                        if prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0) < 0:
                            raise Failure("prctl failed", ctypes.get_errno())
                        if os.getppid() != parent:  # gone before the prctl: as unshare(1)
                            os.kill(os.getpid(), opts.kill_child)
                    if binder is not None:
                        os.close(binder[1])
                    for signum in WAIT_SIGNALS:
                        # A ^C before the exec ends the child as it would end COMMAND.
                        if callable(signal.getsignal(signum)):
                            signal.signal(signum, signal.SIG_DFL)
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                    become_command(opts, real_uid, real_gid)
                    return 1  # become_command only returns by raising
                child_main(command)
        if opts.persist:
            if binder is not None:
                helpers.remove(binder)
                sync_with_helper(binder)
            else:
                bind_ns_files(opts, os.getpid())
        if not pid:
            # Called in-process, a failure after --wd leaves the caller where it was (after
            # --root there is no going back).
            back = os.getcwd() if opts.wd is not None and opts.root is None else None
            try:
                become_command(opts, real_uid, real_gid)
            finally:
                if back is not None:
                    os.chdir(back)
        _, status = os.waitpid(pid, 0)
        pid = 0
    finally:
        for helper in helpers:
            sync_with_helper(helper, go=False)
        if pid:
            # A failure (or an exception) after the fork: called in-process, a COMMAND left
            # running would become our caller's child, never reaped.
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if mask is not None:
            # What came while we waited was for the wait, not for our caller (unshare(1)
            # exits with them still blocked).
            while signal.sigtimedwait(WAIT_SIGNALS - mask, 0) is not None:
                pass
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return os.waitstatus_to_exitcode(status)


def main(argv: Optional[List[str]] = None) -> int:
    """Run unshare(1)'s command line (sys.argv[1:] by default); return the exit status: the
    command's (-N when signal N killed it) with --fork, else 1 or another failure status
    (without --fork, a successful run execs the command and never returns).

    Called in-process, main() leaves its caller's signal handlers, signal mask and working
    directory as they were, and no child or fd of its own, on every return path; what only
    a run without --fork changes for good before a failure (the namespaces, --root, the
    ids) stays changed, as it would in unshare(1).  An item that is not a str is a TypeError;
    one no command line can hold (a NUL byte, a lone surrogate) is refused as a bad one."""
    if isinstance(argv, (str, bytes)):  # would be taken a character at a time
        raise TypeError(f"argv must be a list of str, not {type(argv).__name__}")
    args = sys.argv[1:] if argv is None else list(argv)
    for arg in args:
        if not isinstance(arg, str):
            raise TypeError(f"argv must be a list of str, not of {type(arg).__name__}")
    handlers = [(signum, signal.getsignal(signum))
                for signum in (signal.SIGCHLD, *PYTHON_IGNORED)]
    try:
        for arg in args:
            # Only main() called in-process can pass what no C string holds: refused before
            # anything is done, where os functions would raise ValueError half-way.
            if "\0" in arg:
                raise Failure(f"argument contains a NUL byte: {arg!r}")
            try:
                os.fsencode(arg)
            except UnicodeEncodeError:
                raise Failure(f"argument cannot be encoded: {arg!r}") from None
        return run(parse_args(args))
    except Failure as failure:
        return failure.report()
    finally:
        for signum, handler in handlers:
            # None: a handler not set from Python, which cannot be put back.
            if handler is not None and signal.getsignal(signum) is not handler:
                signal.signal(signum, handler)


def exit_with(status: int) -> None:
    """Exit with status; -N: as unshare(1), end by signal N that ended the command, so that
    our caller sees it (128+N if it does not end us)."""
    if status < 0:
        if -status not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-status, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {-status})
        os.kill(os.getpid(), -status)
        status = 128 - status
    sys.exit(status)


if __name__ == "__main__":
    try:
        exit_with(main())
    finally:
        # Only --help and --version write to stdout, and they flush it, reporting a failure:
        # what could not be written is not tried again at exit (exit status 120).
        sys.stdout = None
        try:
            if sys.stderr is not None:
                sys.stderr.flush()
        except OSError:  # a message that 2>/dev/full refused (the status is 1 for it)
            sys.stderr = None
