"""Kubernetes Pod Security Standards, profile "restricted" (which includes "baseline"), as the documentation
(kubernetes.io/docs/concepts/security/pod-security-standards/) states each control for current versions: a pod spec
(the API's camelCase JSON, as our manifests serialize it) → the controls it violates, each with the field."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
SECCOMP_ALLOWED = {"RuntimeDefault", "Localhost"}


def _containers(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for i, c in enumerate(pod.get(kind) or []):
            yield f"{kind}[{i}]", c


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Every restricted-profile control ``pod`` (a PodSpec) violates, e.g. ``"containers[0].securityContext.
    allowPrivilegeEscalation must be false"``; empty when it passes."""
    bad: list[str] = []
    psc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            bad.append(f"{field} must be unset or false")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        bad.append("securityContext.windowsOptions.hostProcess must be unset or false")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            bad.append(f"securityContext.sysctls {sysctl.get('name')} is not a safe sysctl")
    for v in pod.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            bad.append(f"volume {v.get('name')}: type {sorted(kinds - RESTRICTED_VOLUMES)} is not allowed")
    bad += _context_violations("securityContext", psc)
    pod_non_root, pod_seccomp = psc.get("runAsNonRoot") is True, (psc.get("seccompProfile") or {}).get("type")
    for where, c in _containers(pod):
        sc = c.get("securityContext") or {}
        at = f"{where}.securityContext"
        if sc.get("privileged"):
            bad.append(f"{at}.privileged must be unset or false")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            bad.append(f"{at}.windowsOptions.hostProcess must be unset or false")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                bad.append(f"{where}.ports hostPort {p['hostPort']} must be unset or 0")
        if sc.get("procMount") not in (None, "Default"):
            bad.append(f"{at}.procMount must be unset or Default")
        bad += _context_violations(at, sc)
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{at}.allowPrivilegeEscalation must be false")
        if sc.get("runAsNonRoot") is False or not (pod_non_root or sc.get("runAsNonRoot") is True):
            bad.append(f"{at}.runAsNonRoot must be true (here or in the pod's securityContext)")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp is None and pod_seccomp not in SECCOMP_ALLOWED:
            bad.append(f"{at}.seccompProfile.type must be RuntimeDefault or Localhost (here or in the pod's)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{at}.capabilities.drop must include ALL")
        added = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            bad.append(f"{at}.capabilities.add may only hold NET_BIND_SERVICE, not {sorted(added)}")
    return bad


def _context_violations(at: str, sc: dict[str, Any]) -> list[str]:
    """The controls a pod's and a container's securityContext share."""
    bad = []
    if sc.get("runAsUser") == 0:
        bad.append(f"{at}.runAsUser must not be 0")
    seccomp = (sc.get("seccompProfile") or {}).get("type")
    if seccomp is not None and seccomp not in SECCOMP_ALLOWED:
        bad.append(f"{at}.seccompProfile.type {seccomp} is not allowed")
    apparmor = (sc.get("appArmorProfile") or {}).get("type")
    if apparmor not in (None, "RuntimeDefault", "Localhost"):
        bad.append(f"{at}.appArmorProfile.type {apparmor} is not allowed")
    selinux = sc.get("seLinuxOptions") or {}
    if selinux.get("type") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        bad.append(f"{at}.seLinuxOptions: type must be a container type, user and role unset")
    return bad
