# Sourced by scripts/install-deps.sh. Python packages for the embedder's reference test
# (embedder/tests/reference.rs runs scripts/reference/bert_numpy.py with the `python3` on PATH).
# Idempotent: when the imports work it only checks.
embedder_python=${PYTHON:-python3}
embedder_python_pkgs=(numpy safetensors tokenizers)
if "$embedder_python" -c 'import numpy, safetensors, tokenizers' 2>/dev/null; then
    echo "install-deps: python reference deps present ($("$embedder_python" -c 'import numpy, safetensors, tokenizers as t; print("numpy", numpy.__version__, "safetensors", safetensors.__version__, "tokenizers", t.__version__)'))"
else
    echo "install-deps: pip install ${embedder_python_pkgs[*]} for $embedder_python"
    # A Debian-managed python3 refuses plain `pip install` (PEP 668); these packages only add
    # modules, so allow it there.
    "$embedder_python" -m pip install --quiet --disable-pip-version-check "${embedder_python_pkgs[@]}" \
        || "$embedder_python" -m pip install --quiet --disable-pip-version-check --break-system-packages "${embedder_python_pkgs[@]}"
    "$embedder_python" -c 'import numpy, safetensors, tokenizers'
fi
unset embedder_python embedder_python_pkgs
