//! Prints the EmbeddingRollout CRD as YAML (`make crds` writes it to crds/).
fn main() {
    print!("{}", embedding_rollout_operator::crd::crd_yaml());
}
