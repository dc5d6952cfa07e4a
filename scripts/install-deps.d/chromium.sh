# The dashboard's browser test (e2e/tests/dashboard.rs): Debian's chromium, run headless. Its
# recommended packages (fonts, desktop integration) are left out except one font, so the page's text
# is drawn (headless chromium renders no text without any font).
chromium_missing=()
for p in chromium fonts-dejavu-core; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || chromium_missing+=("$p")
done
if [ ${#chromium_missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${chromium_missing[*]} (dashboard browser test)"
  # Package lists may be stale when install-deps.sh had nothing of its own to install.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${chromium_missing[@]}" \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${chromium_missing[@]}"; }
fi
chromium --version >/dev/null 2>&1 || { echo "install-deps: 'chromium --version' failed" >&2; exit 1; }
unset chromium_missing
