# The helpers the .ci/ scripts share; each script sources it after `set -euo pipefail`.
# shellcheck shell=bash

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ci_name=$(basename "$0")

section() { printf '\n======== %s ========\n' "$*"; }
log() { printf '[%s] %s\n' "$ci_name" "$*" >&2; }
die() { log "$*"; exit 1; }

# ci_start: as root, from the checkout's root, in the environment a user has (output must not
# depend on PYTHONUNBUFFERED), where a skipped privileged test counts as a failure.
ci_start() {
    [[ $(id -u) -eq 0 ]] || die "needs root: the namespace tests must run, not skip"
    cd "$repo"
    unset PYTHONUNBUFFERED
    export LINUX_CLONE_REQUIRE_PRIVILEGE=1
    export DEBIAN_FRONTEND=noninteractive
}

# work_dir: a scratch directory in $work, removed on exit.
work_dir() {
    work=$(mktemp -d "${TMPDIR:-/tmp}/linux_clone-$ci_name.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    chmod 755 "$work"  # tests that drop to uid 65534 still import the package from a venv here
}

apt_updated=0
apt_install() {  # apt_install PACKAGE...: from Debian's archive, the lists updated once
    if ((!apt_updated)); then
        apt-get update -q >/dev/null
        apt_updated=1
    fi
    apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

# need_commands COMMAND:PACKAGE...: install the packages whose command is missing.
need_commands() {
    local pair missing=()
    for pair; do
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt_install "${missing[@]}"
    fi
}

# test_packages: what building and testing on the system's python3 needs.
test_packages() {
    need_commands gcc:gcc ip:iproute2 mount:mount unshare:util-linux hostname:hostname
    local missing=()
    # Debian's python3 keeps venv/ensurepip and the C headers in packages of their own.
    python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
    python3 -c 'import os, sysconfig
raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_path("include"), "Python.h")))' \
        || missing+=(python3-dev)
    [[ -e /usr/include/stdio.h ]] || missing+=(libc6-dev)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt_install "${missing[@]}"
    fi
}

# find_pythons: python3, then each other CPython >= 3.9 that pyenv has, into the arrays
# pythons (the executables) and tags (python3, or pyenv's version name).
find_pythons() {
    local dir py main_prefix
    pythons=(python3) tags=(python3)
    main_prefix=$(python3 -c 'import sys; print(sys.base_prefix)')
    for dir in $(ls -d "${PYENV_ROOT:-/root/.pyenv}"/versions/3.* 2>/dev/null | sort -V); do
        py=$dir/bin/python3
        [[ -x $py ]] || continue
        "$py" -c 'import sys; raise SystemExit(sys.version_info < (3, 9))' || continue
        [[ $("$py" -c 'import sys; print(sys.base_prefix)') != "$main_prefix" ]] || continue
        pythons+=("$py") tags+=("$(basename "$dir")")
    done
}

free_threaded() {  # free_threaded PYTHON: built with --disable-gil?
    [[ $("$1" -c 'import sysconfig; print(sysconfig.get_config_var("Py_GIL_DISABLED") or 0)') == 1 ]]
}

# install_project VENV BUILD_DIR [pip options]: the package from this checkout with its test
# extra.  Where a dependency has no wheel for this interpreter (3.13t: the newest hypothesis
# and mypy's ast-serialize are Rust, and crates cannot be fetched here), with wheels only: pip
# then picks the newest versions that have one.  A free-threaded interpreter gets wheels only
# from the start.  The project itself is always built from this checkout.
install_project() {
    local venv=$1 build=$2
    shift 2
    if ! free_threaded "$venv/bin/python" \
            && "$venv/bin/pip" install -q --config-settings=build-dir="$build" "$@" '.[test]'; then
        return 0
    fi
    log "installing with --only-binary :all:"
    "$venv/bin/pip" install -q --only-binary :all: --config-settings=build-dir="$build" \
        "$@" '.[test]'
}

# project_venv PYTHON TAG BUILD_DIR: a fresh venv $venv ($work/venv-TAG) with the project
# installed in it from BUILD_DIR (a build directory per interpreter: CMake caches the Python it
# found); fails if the install does.
project_venv() {
    local py=$1 tag=$2
    section "$tag: $("$py" --version 2>&1) ($(command -v "$py"))"
    venv=$work/venv-$tag
    "$py" -m venv "$venv" && install_project "$venv" "$3"
}

# pytest_verdict TAG STATUS: add TAG to the array failed unless pytest's STATUS is 0; a run
# that collected no tests (5) fails too.
pytest_verdict() {
    case $2 in
        0) ;;
        5) log "pytest collected no tests on $1"; failed+=("$1 (no tests)") ;;
        124) log "pytest timed out on $1"; failed+=("$1 (timeout)") ;;
        *) failed+=("$1 (pytest exit $2)") ;;
    esac
}

# debian_mirror: the Debian mirror this machine's apt uses (never another host).
debian_mirror() {
    local f uris
    uris=$(
        # deb822 .sources files: the URIs of a stanza whose suites are not the security ones.
        for f in /etc/apt/sources.list.d/*.sources; do
            [[ -r $f ]] || continue
            awk '
                function flush() { if (uris != "" && suites !~ /-security/) { print uris; exit } }
                /^[[:space:]]*$/ { flush(); uris = ""; suites = ""; next }
                tolower($1) == "uris:" { uris = $2 }
                tolower($1) == "suites:" { $1 = ""; suites = $0 }
                END { flush() }
            ' "$f"
        done
        # one-line sources.list entries: deb [options] URI SUITE COMPONENTS...
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [[ -r $f ]] || continue
            sed -E -n 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+([^[:space:]]+).*/\2 \3/p' "$f" \
                | awk '$2 !~ /-security/ { print $1 }'
        done
    )
    grep -m1 -E '/debian/?$' <<<"$uris" || die "no Debian mirror found in /etc/apt/sources.list*"
}

# debian_root DIR SUITE PACKAGES: a minimal Debian SUITE root with PACKAGES (comma-separated),
# debootstrapped once into DIR and reused; a changed package list, or REBUILD=1, rebuilds it.
debian_root() {
    local root=$1 suite=$2 packages=$3 mirror script=
    local stamp=$root/.linux_clone-root-ready
    need_commands debootstrap:debootstrap bwrap:bubblewrap
    [[ -e /usr/share/keyrings/debian-archive-keyring.gpg ]] || apt_install debian-archive-keyring
    if [[ ${REBUILD:-0} == 1 ]]; then
        rm -rf "$root"
    fi
    if [[ -e $stamp && $(cat "$stamp") != "$packages" ]]; then
        log "the cached $suite root was made with other packages; rebuilding it"
        rm -rf "$root"
    fi
    if [[ -e $stamp ]]; then
        log "reusing the $suite root in $root"
        return 0
    fi
    mirror=$(debian_mirror)
    # An older debootstrap has no script for a suite newer than itself: it is bootstrapped
    # like sid.
    [[ -e /usr/share/debootstrap/scripts/$suite ]] || script=/usr/share/debootstrap/scripts/sid
    log "building the $suite root in $root from $mirror (several minutes, once)"
    rm -rf "$root.partial"
    mkdir -p "$(dirname "$root")"
    if ! debootstrap --variant=minbase --include="$packages" "$suite" "$root.partial" "$mirror" \
            ${script:+"$script"} >"$root.partial.log" 2>&1; then
        tail -n 30 "$root.partial.log" >&2
        die "debootstrap failed (full log: $root.partial.log)"
    fi
    rm -rf "$root"
    mv "$root.partial" "$root"
    mv "$root.partial.log" "$root/.debootstrap.log"
    echo "$packages" >"$stamp"
}

# in_root ROOT COMMAND...: run COMMAND in ROOT with the checkout at /src, through bwrap as real
# root with all capabilities (no --unshare-user, no chroot: a chrooted process cannot create
# user namespaces), sharing the host's network.
in_root() {
    local root=$1 path bundle=/etc/ssl/certs/ca-certificates.crt cert
    shift
    local binds=(--bind "$root" / --bind "$repo" /src --proc /proc --dev /dev --bind /sys /sys
                 --tmpfs /tmp --ro-bind /etc/resolv.conf /etc/resolv.conf)
    # The host's pip configuration and local package indexes, where this machine has them.
    for path in /etc/pip.conf /opt/wheels /opt/pypi /opt/pypi-more; do
        [[ -e $path ]] && binds+=(--ro-bind "$path" "$path")
    done
    # The host's CA bundle (it may hold a proxy's CA that the root's ca-certificates lacks),
    # where the root's OpenSSL and pip look for it.
    cert=${PIP_CERT:-$bundle}
    local env=()
    if [[ -r $cert ]]; then
        binds+=(--ro-bind "$cert" "$bundle")
        env=(--setenv PIP_CERT "$bundle" --setenv SSL_CERT_FILE "$bundle")
    fi
    bwrap "${binds[@]}" "${env[@]}" --cap-add ALL --die-with-parent --chdir /src \
        --setenv PATH /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --setenv HOME /root --unsetenv PYTHONPATH --unsetenv VIRTUAL_ENV "$@"
}
