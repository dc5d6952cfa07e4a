//! Writes the project's CRDs as YAML into the directory given (`make crds`: crds/), one file each.
fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "crds".into());
    for (file, yaml) in embedding_rollout_operator::crd::crd_files() {
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, dir.join(&file))?;
    }
    Ok(())
}
