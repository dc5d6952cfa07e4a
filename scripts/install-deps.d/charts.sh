# make charts-check: python3-yaml (YAML -> JSON for the API server, PromQL extraction), file and
# binutils (objdump) for scripts/check-image-binaries.sh. promtool comes with the prometheus package.
charts_missing=()
for p in python3-yaml file binutils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || charts_missing+=("$p")
done
if [ ${#charts_missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${charts_missing[*]} (charts)"
  # Package lists may be stale when install-deps.sh had nothing of its own to install.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${charts_missing[@]}" \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${charts_missing[@]}"; }
fi
python3 -c 'import yaml' || { echo "install-deps: python3 cannot import yaml" >&2; exit 1; }
unset charts_missing
