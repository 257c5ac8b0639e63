//! Helpers shared by the stand-in's integration tests.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// The ferrolb CRDs as committed in the repository's `crds/` (the stand-in imports nothing of
/// the product; `ferrolb crds` writes these files and a product test keeps them current).
pub fn repo_crds() -> Vec<CustomResourceDefinition> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| serde_yaml::from_str(&std::fs::read_to_string(f).unwrap()).unwrap())
        .collect()
}
