#!/usr/bin/env bash
# Keep NIC interrupts off the cores ringcast's shards run on.
#
# Usage: tuning/irq-affinity.sh --irq-cpus LIST [--iface IFACE]... [--apply]
#
#   --irq-cpus LIST  CPUs that should take the NIC's interrupts, in
#                    cpulist form ("0-1", "0,8"). Give ringcast the other
#                    cores (CPUAffinity= in ringcast.service).
#   --iface IFACE    network interface(s) to move; default: every interface
#                    backed by a device (not lo, bridges or veths).
#   --apply          write /proc/irq/N/smp_affinity_list (needs root).
#                    Without it: dry run, print what would change.
#
# Why: a shard pinned to a core that also services the NIC's interrupts and
# softirqs loses that time to packet processing in bursts (reconnect storms,
# broadcast fan-out), which shows up as tail latency on that shard only.
# On a 16-core box a common split is IRQs on 0-1 and
# CPUAffinity=2-15 for ringcast (shards = 0 then starts 14 shards). With a
# multi-queue NIC and few IRQ cores, consider fewer queues
# (`ethtool -L IFACE combined 2`) so each queue has its own IRQ core.
#
# irqbalance moves interrupts back. Either stop it
# (`systemctl disable --now irqbalance`) or ban the shard cores in
# /etc/default/irqbalance: IRQBALANCE_BANNED_CPULIST=2-15.
# Settings do not survive a reboot or a driver reload: run this from a
# oneshot unit ordered before ringcast.service if you rely on it.
#
# Environment (for tests): RINGCAST_PROC replaces /proc, RINGCAST_SYS
# replaces /sys.
set -euo pipefail

proc="${RINGCAST_PROC:-/proc}"
sys="${RINGCAST_SYS:-/sys}"
irq_cpus=""
ifaces=()
apply=0

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

while (($# > 0)); do
    case "$1" in
    --irq-cpus)
        [[ $# -ge 2 ]] || { echo "irq-affinity.sh: --irq-cpus needs a list" >&2; exit 2; }
        irq_cpus="$2"
        shift
        ;;
    --iface)
        [[ $# -ge 2 ]] || { echo "irq-affinity.sh: --iface needs a name" >&2; exit 2; }
        ifaces+=("$2")
        shift
        ;;
    --apply) apply=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "irq-affinity.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

if [[ -z "$irq_cpus" ]]; then
    echo "irq-affinity.sh: --irq-cpus is required (e.g. --irq-cpus 0-1)" >&2
    exit 2
fi
if [[ ! "$irq_cpus" =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]]; then
    echo "irq-affinity.sh: --irq-cpus must be a cpulist like 0-1 or 0,8: $irq_cpus" >&2
    exit 2
fi

if ((${#ifaces[@]} == 0)); then
    for dev in "$sys"/class/net/*; do
        [[ -e "$dev/device" ]] && ifaces+=("${dev##*/}")
    done
fi
if ((${#ifaces[@]} == 0)); then
    echo "irq-affinity.sh: no device-backed network interface found" >&2
    exit 1
fi

# IRQ numbers of one interface: its MSI/MSI-X vectors, else the lines of
# /proc/interrupts that name it.
irqs_of() {
    local iface="$1" msi="$sys/class/net/$1/device/msi_irqs"
    if [[ -d "$msi" ]] && compgen -G "$msi/*" >/dev/null; then
        local f
        for f in "$msi"/*; do
            echo "${f##*/}"
        done
    else
        awk -v dev="$iface" '$NF ~ dev { sub(":", "", $1); print $1 }' "$proc/interrupts"
    fi
}

if ((apply)); then
    echo "applying: NIC interrupts -> CPUs $irq_cpus"
else
    echo "dry run: nothing is written (use --apply); NIC interrupts -> CPUs $irq_cpus"
fi
fmt="%-12s %-6s %-16s %-16s %s\n"
# shellcheck disable=SC2059 # the format string is ours
printf "$fmt" IFACE IRQ BEFORE WANTED ACTION

failed=0
for iface in "${ifaces[@]}"; do
    found=0
    while read -r irq; do
        [[ -n "$irq" ]] || continue
        found=1
        file="$proc/irq/$irq/smp_affinity_list"
        [[ -r "$file" ]] || continue
        before="$(<"$file")"
        if [[ "$before" == "$irq_cpus" ]]; then
            action="ok"
        elif ((apply)); then
            if echo "$irq_cpus" >"$file" 2>/dev/null; then
                action="set"
            else
                action="FAILED (managed IRQ or not root)"
                failed=$((failed + 1))
            fi
        else
            action="would set"
        fi
        # shellcheck disable=SC2059
        printf "$fmt" "$iface" "$irq" "$before" "$irq_cpus" "$action"
    done < <(irqs_of "$iface")
    ((found)) || echo "$iface: no interrupts found (virtual device?)"
done

if systemctl is-active --quiet irqbalance 2>/dev/null; then
    echo "note: irqbalance is running and will move these back (see --help)"
fi
((failed == 0))
