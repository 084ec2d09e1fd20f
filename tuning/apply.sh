#!/usr/bin/env bash
# Apply tuning/sysctl.d/90-ringcast.conf to the running kernel.
#
# Usage: tuning/apply.sh [--apply] [--persist] [--file CONF]
#
#   (no flag)   dry run: print every key with its current and wanted value
#               and what would be done. Reads /proc/sys only; writes nothing.
#   --apply     set the values now with `sysctl -w` (needs root), then print
#               the value read back after the write.
#   --persist   with --apply: also install the file as
#               /etc/sysctl.d/90-ringcast.conf so it survives a reboot.
#   --file F    use another sysctl.d file (same `key = value` syntax).
#
# Single-number limits (fs.nr_open, net.core.somaxconn, ...) and tcp_mem are
# only raised: a host that already has a higher value keeps it. The ranges
# and per-socket buffers (ip_local_port_range, tcp_rmem, tcp_wmem) are set
# as written, except that a larger buffer maximum already set is kept.
# Keys the kernel does not have (nf_conntrack_max without the nf_conntrack
# module) are skipped.
#
# Environment (for tests): RINGCAST_PROC_SYS replaces /proc/sys,
# RINGCAST_SYSCTL_D replaces /etc/sysctl.d.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
conf="$here/sysctl.d/90-ringcast.conf"
proc_sys="${RINGCAST_PROC_SYS:-/proc/sys}"
sysctl_d="${RINGCAST_SYSCTL_D:-/etc/sysctl.d}"
apply=0
persist=0

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

while (($# > 0)); do
    case "$1" in
    --apply) apply=1 ;;
    --persist) persist=1 ;;
    --file)
        [[ $# -ge 2 ]] || { echo "apply.sh: --file needs a path" >&2; exit 2; }
        conf="$2"
        shift
        ;;
    -h | --help) usage; exit 0 ;;
    *) echo "apply.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

if ((persist && !apply)); then
    echo "apply.sh: --persist only makes sense with --apply" >&2
    exit 2
fi
[[ -r "$conf" ]] || { echo "apply.sh: cannot read $conf" >&2; exit 2; }

# Its arguments with leading/trailing whitespace removed and runs of
# spaces and tabs collapsed to one space.
squeeze() {
    local -a words
    read -ra words <<<"$*"
    echo "${words[*]}"
}

# Current value of a key, squeezed, or empty when absent.
read_key() {
    local path="$proc_sys/${1//.//}"
    [[ -r "$path" ]] || return 0
    squeeze "$(<"$path")"
}

# Keys set exactly as written; every other key is raise-only.
is_exact() {
    case "$1" in
    net.ipv4.ip_local_port_range | net.ipv4.tcp_rmem | net.ipv4.tcp_wmem) return 0 ;;
    *) return 1 ;;
    esac
}

last_field() {
    echo "${1##* }"
}

mode="dry run: nothing is written (use --apply)"
((apply)) && mode="applying with sysctl -w"
echo "ringcast tuning: $conf"
echo "$mode"
echo
fmt="%-32s %-26s %-26s %-11s %s\n"
# shellcheck disable=SC2059 # the format string is ours
printf "$fmt" KEY BEFORE WANTED ACTION AFTER

changed=0
failed=0
while IFS= read -r line || [[ -n "$line" ]]; do
    line="${line%%#*}"
    [[ "$line" == *=* ]] || continue
    key="${line%%=*}"
    wanted="${line#*=}"
    key="$(squeeze "$key")"
    wanted="$(squeeze "$wanted")"
    [[ -n "$key" ]] || continue

    before="$(read_key "$key")"
    # Buffers: keep a larger per-socket maximum the host already allows.
    if [[ "$key" == net.ipv4.tcp_[rw]mem && -n "$before" ]] &&
        (($(last_field "$before") > $(last_field "$wanted"))); then
        wanted="${wanted% *} $(last_field "$before")"
    fi
    if [[ -z "$before" ]]; then
        action="skip"
        before="(absent)"
    elif [[ "$before" == "$wanted" ]]; then
        action="ok"
    elif ! is_exact "$key" && (($(last_field "$before") >= $(last_field "$wanted"))); then
        action="keep"
    else
        action="set"
    fi

    after="$before"
    if [[ "$action" == set ]]; then
        if ((apply)); then
            if sysctl -q -w "$key=$wanted" >/dev/null; then
                changed=$((changed + 1))
            else
                action="FAILED"
                failed=$((failed + 1))
            fi
            after="$(read_key "$key")"
        else
            action="would set"
        fi
    fi
    # shellcheck disable=SC2059
    printf "$fmt" "$key" "$before" "$wanted" "$action" "$after"
done <"$conf"

echo
if ((apply)); then
    echo "$changed key(s) changed, $failed failed"
    if ((persist)); then
        install -m 0644 "$conf" "$sysctl_d/90-ringcast.conf"
        echo "installed $sysctl_d/90-ringcast.conf (applied at boot)"
    else
        echo "not persistent: rerun with --apply --persist, or copy the file to $sysctl_d/"
    fi
else
    echo "dry run: nothing changed"
fi
((failed == 0))
