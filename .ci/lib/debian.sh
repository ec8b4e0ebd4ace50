# Debian helpers for the .ci/ scripts (sourced, not run).

# debian_mirror (the mirror this machine's apt uses) is lib.sh's.
# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

# apt_private DIR SUITE: set up (once) an apt state of its own in DIR that sees only SUITE's
# main component on debian_mirror, and fill the array apt_opts with the options that make
# apt-get and apt-cache use it.  The machine's own apt state is never touched.
apt_private() {
    local dir=$1 suite=$2 mirror
    mirror=$(debian_mirror) || { echo "no Debian mirror in /etc/apt/sources.list*" >&2; return 1; }
    mkdir -p "$dir/parts" "$dir/lists/partial" "$dir/cache/archives/partial"
    touch "$dir/status"
    cat >"$dir/parts/$suite.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt_opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$dir/parts"
              -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
              -o "Dir::State::Lists=$dir/lists" -o "Dir::State::status=$dir/status"
              -o "Dir::Cache=$dir/cache" -o APT::Sandbox::User=root)
}

# apt_install_missing COMMAND:PACKAGE...: install (from the machine's apt) the package of each
# command that is not on PATH.
apt_install_missing() {
    local pair missing=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
    ((${#missing[@]})) || return 0
    echo "installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}
