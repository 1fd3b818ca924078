#!/usr/bin/env bash
# Validates docker/k8s/ offline (no cluster needed): every manifest against the Kubernetes
# OpenAPI schemas bundled in kubernetes-validate (PyPI), strictly (unknown fields are errors),
# and the pgtier.toml inside the ConfigMap with `pgtier check`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q 'kubernetes-validate==1.37.0' \
  || python3 -m pip install -q --break-system-packages 'kubernetes-validate==1.37.0'
for v in 1.30.0 1.37.0; do
  kubernetes-validate --strict --quiet -k "$v" docker/k8s/*.yaml docker/k8s/peered/*.yaml
done
cargo build -q -p pgtier --bin pgtier
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
# The block under `pgtier.toml: |`, unindented; the peered one with each pod's peer_id as
# its container's start command writes it.
sed -n '/pgtier.toml: |/,$p' docker/k8s/configmap.yaml | tail -n +2 | sed 's/^    //' >"$tmp"
target/debug/pgtier check "$tmp"
for ordinal in 0 1; do
  sed -n '/pgtier.toml: |/,$p' docker/k8s/peered/configmap.yaml | tail -n +2 | sed 's/^    //' |
    HOSTNAME="pgtier-$ordinal" sh -c 'id=$(( ${HOSTNAME##*-} + 1 )) && sed "s/^peer_id = 0$/peer_id = $id/"' >"$tmp"
  grep -q "^peer_id = $((ordinal + 1))$" "$tmp"
  target/debug/pgtier check "$tmp"
done
echo "docker/k8s: manifests valid for Kubernetes 1.30 and 1.37; pgtier.toml valid (also peered)"
