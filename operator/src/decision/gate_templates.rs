//! The gates an analysis judges: the rollout's own `gates.custom` and those of the templates it
//! refers to (`gates.templates`), merged. Pure: the edge reads the templates, this decides what
//! they mean.

use crate::crd::{CustomGate, GateTemplateRef, Gates};

/// One referenced template as the edge read it: its gates, or why it could not be read
/// ("not found", "forbidden: ...").
#[derive(Clone, Debug, PartialEq)]
pub struct FetchedTemplate {
    pub reference: GateTemplateRef,
    pub gates: Result<Vec<CustomGate>, String>,
}

/// The gates to judge, and what keeps them from being the ones the user asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// `custom` followed by each readable template's gates, in reference order; a gate whose name
    /// is already taken is left out (and named in `problems`).
    pub gates: Gates,
    /// Each one makes the analysis Inconclusive: an analysis never passes on fewer gates than the
    /// spec names, nor on a gate that might be the wrong one of two with one name.
    pub problems: Vec<String>,
}

/// Merges the templates' gates into `gates.custom`. `fetched` holds one entry per reference, in
/// `gates.templates` order; a reference without an entry counts as unreadable.
pub fn resolve(gates: &Gates, fetched: &[FetchedTemplate]) -> Resolved {
    let mut merged = gates.clone();
    let mut problems = Vec::new();
    // Where each name came from, for the duplicate message.
    let mut origin: Vec<(String, String)> = gates
        .custom
        .iter()
        .map(|g| (g.name.clone(), "gates.custom".to_string()))
        .collect();
    for reference in &gates.templates {
        let what = reference.describe();
        let Some(found) = fetched.iter().find(|f| &f.reference == reference) else {
            problems.push(format!("gate template {what} was not read"));
            continue;
        };
        match &found.gates {
            Err(why) => problems.push(format!("gate template {what}: {why}")),
            Ok(template_gates) if template_gates.is_empty() => {
                problems.push(format!("gate template {what} has no gates"))
            }
            Ok(template_gates) => {
                for g in template_gates {
                    if let Some((_, first)) = origin.iter().find(|(n, _)| n == &g.name) {
                        problems.push(format!(
                            "gate {} of {what} has the name of a gate of {first}: rename one",
                            g.name
                        ));
                        continue;
                    }
                    origin.push((g.name.clone(), what.clone()));
                    merged.custom.push(g.clone());
                }
            }
        }
    }
    // A reference listed twice would add its gates twice: said once, as a duplicate above.
    Resolved {
        gates: merged,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(name: &str, max: f64) -> CustomGate {
        CustomGate {
            name: name.into(),
            query: format!("metric_{name}{{service=\"{{{{service}}}}\"}}"),
            max: Some(max),
            min: None,
            samples_query: None,
            min_samples: None,
            blocking: true,
        }
    }

    fn reference(name: &str, cluster_scope: bool) -> GateTemplateRef {
        GateTemplateRef {
            name: name.into(),
            cluster_scope,
        }
    }

    fn gates(custom: Vec<CustomGate>, templates: Vec<GateTemplateRef>) -> Gates {
        Gates {
            custom,
            templates,
            ..Gates::default()
        }
    }

    fn names(r: &Resolved) -> Vec<&str> {
        r.gates.custom.iter().map(|g| g.name.as_str()).collect()
    }

    #[test]
    fn no_templates_leaves_the_gates_as_they_are() {
        let g = gates(vec![gate("p99", 50.0)], vec![]);
        let r = resolve(&g, &[]);
        assert_eq!(r.gates, g);
        assert!(r.problems.is_empty());
    }

    #[test]
    fn template_gates_follow_the_inline_ones_in_reference_order() {
        let g = gates(
            vec![gate("p99", 50.0)],
            vec![reference("team", false), reference("org", true)],
        );
        let fetched = [
            // Read order does not matter: the references' order does.
            FetchedTemplate {
                reference: reference("org", true),
                gates: Ok(vec![gate("alerts", 0.0)]),
            },
            FetchedTemplate {
                reference: reference("team", false),
                gates: Ok(vec![gate("memory", 1e9), gate("replicas", 10.0)]),
            },
        ];
        let r = resolve(&g, &fetched);
        assert_eq!(names(&r), ["p99", "memory", "replicas", "alerts"]);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    #[test]
    fn a_namespaced_and_a_cluster_template_of_one_name_are_different_templates() {
        let g = gates(vec![], vec![reference("gates", true)]);
        let fetched = [FetchedTemplate {
            reference: reference("gates", false),
            gates: Ok(vec![gate("memory", 1.0)]),
        }];
        let r = resolve(&g, &fetched);
        assert!(r.gates.custom.is_empty());
        assert_eq!(
            r.problems,
            ["gate template ClusterEmbeddingGateTemplate gates was not read"]
        );
    }

    #[test]
    fn an_unreadable_template_is_a_problem_and_the_others_still_apply() {
        let g = gates(
            vec![],
            vec![reference("missing", false), reference("org", true)],
        );
        let fetched = [
            FetchedTemplate {
                reference: reference("missing", false),
                gates: Err("not found in namespace prod".into()),
            },
            FetchedTemplate {
                reference: reference("org", true),
                gates: Ok(vec![gate("alerts", 0.0)]),
            },
        ];
        let r = resolve(&g, &fetched);
        assert_eq!(names(&r), ["alerts"]);
        assert_eq!(
            r.problems,
            ["gate template EmbeddingGateTemplate missing: not found in namespace prod"]
        );
    }

    #[test]
    fn a_name_used_twice_keeps_the_first_and_is_a_problem() {
        let g = gates(
            vec![gate("p99", 50.0)],
            vec![reference("team", false), reference("org", true)],
        );
        let fetched = [
            FetchedTemplate {
                reference: reference("team", false),
                gates: Ok(vec![gate("p99", 80.0), gate("memory", 1.0)]),
            },
            FetchedTemplate {
                reference: reference("org", true),
                gates: Ok(vec![gate("memory", 2.0)]),
            },
        ];
        let r = resolve(&g, &fetched);
        assert_eq!(names(&r), ["p99", "memory"]);
        assert_eq!(r.gates.custom[0].max, Some(50.0));
        assert_eq!(r.gates.custom[1].max, Some(1.0));
        assert_eq!(
            r.problems,
            [
                "gate p99 of EmbeddingGateTemplate team has the name of a gate of gates.custom: rename one",
                "gate memory of ClusterEmbeddingGateTemplate org has the name of a gate of EmbeddingGateTemplate team: rename one",
            ]
        );
    }

    #[test]
    fn a_template_referenced_twice_is_a_duplicate() {
        let g = gates(
            vec![],
            vec![reference("team", false), reference("team", false)],
        );
        let fetched = [FetchedTemplate {
            reference: reference("team", false),
            gates: Ok(vec![gate("memory", 1.0)]),
        }];
        let r = resolve(&g, &fetched);
        assert_eq!(names(&r), ["memory"]);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    }

    #[test]
    fn an_empty_template_is_a_problem() {
        let g = gates(vec![], vec![reference("team", false)]);
        let fetched = [FetchedTemplate {
            reference: reference("team", false),
            gates: Ok(vec![]),
        }];
        let r = resolve(&g, &fetched);
        assert_eq!(
            r.problems,
            ["gate template EmbeddingGateTemplate team has no gates"]
        );
    }
}
