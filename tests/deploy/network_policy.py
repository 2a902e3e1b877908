"""A small evaluator of NetworkPolicy ingress rules, enough for the policies in infra/."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    """A pod (its labels and its namespace, which has the automatic name label), or a host
    outside the cluster: no namespace, an IP address."""

    labels: dict
    namespace: str | None
    ip: str | None = None


def outside(ip: str) -> Peer:
    """A host outside the cluster, e.g. a modality on the hospital network."""
    return Peer({}, None, ip)


def selector_matches(selector: dict, labels: dict) -> bool:
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        present, value = expression["key"] in labels, labels.get(expression["key"])
        operator = expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _in_block(block: dict, ip: str | None) -> bool:
    """Pods are taken to lie outside every ipBlock (the policies here name hosts outside the
    cluster, never the pod range)."""
    if ip is None:
        return False
    address = ipaddress.ip_address(ip)
    return address in ipaddress.ip_network(block["cidr"]) and not any(
        address in ipaddress.ip_network(excepted) for excepted in block.get("except", []))


def _peer_matches(entry: dict, source: Peer, policy_namespace: str) -> bool:
    if "ipBlock" in entry:
        return _in_block(entry["ipBlock"], source.ip)
    if source.namespace is None:  # outside the cluster: no pod or namespace selector admits it
        return False
    namespace_selector, pod_selector = entry.get("namespaceSelector"), entry.get("podSelector")
    if namespace_selector is None:
        namespace_ok = source.namespace == policy_namespace
    else:
        namespace_ok = selector_matches(
            namespace_selector, {"kubernetes.io/metadata.name": source.namespace})
    return namespace_ok and (pod_selector is None or selector_matches(pod_selector, source.labels))


def _rule_admits(rule: dict, source: Peer, port: int, policy_namespace: str) -> bool:
    ports = rule.get("ports")
    if ports and not any(p.get("port") == port for p in ports):
        return False
    peers = rule.get("from")
    return not peers or any(_peer_matches(entry, source, policy_namespace) for entry in peers)


def ingress_allowed(policies: list[dict], source: Peer, target: Peer, port: int) -> bool:
    """Whether traffic from `source` reaches `target` on `port` under these policies."""
    selecting = [
        p for p in policies
        if p["metadata"]["namespace"] == target.namespace
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selector_matches(p["spec"]["podSelector"], target.labels)
    ]
    if not selecting:
        return True
    return any(
        _rule_admits(rule, source, port, p["metadata"]["namespace"])
        for p in selecting for rule in p["spec"].get("ingress", [])
    )
