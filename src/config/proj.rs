//! The projections of a decoder layer that an adapter can attach to, named as in Hugging Face
//! Llama checkpoints (`model.layers.{l}.self_attn.q_proj.weight`, …).

/// The linear projections of a decoder layer, the sites an adapter can attach to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];

    /// The checkpoint name of the projection (`q_proj`, …).
    pub fn name(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }

    /// Parses a checkpoint name (`q_proj` or `q`).
    pub fn parse(s: &str) -> Option<Proj> {
        Proj::ALL
            .into_iter()
            .find(|p| p.name() == s || p.name().trim_end_matches("_proj") == s)
    }

    /// The block the projection belongs to in a checkpoint: `mlp` or `self_attn`.
    fn block(self) -> &'static str {
        if matches!(self, Proj::Gate | Proj::Up | Proj::Down) {
            "mlp"
        } else {
            "self_attn"
        }
    }

    /// The full key of this projection's weight in layer `layer`:
    /// `model.layers.{layer}.{mlp|self_attn}.{name}.weight`.
    pub fn weight_key(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}.{}.weight", self.block(), self.name())
    }

    /// The inverse of [`weight_key`](Self::weight_key): the layer and projection of a weight key, or
    /// `None` for any other key.
    pub fn parse_weight_key(key: &str) -> Option<(usize, Proj)> {
        let rest = key.strip_prefix("model.layers.")?.strip_suffix(".weight")?;
        let (layer, rest) = rest.split_once('.')?;
        let (block, name) = rest.split_once('.')?;
        let p = Proj::ALL.into_iter().find(|p| p.name() == name)?;
        (p.block() == block).then_some(())?;
        Some((layer.parse().ok()?, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_keys_round_trip() {
        for p in Proj::ALL {
            for l in [0, 7, 31] {
                assert_eq!(Proj::parse_weight_key(&p.weight_key(l)), Some((l, p)));
            }
        }
        assert_eq!(Proj::weight_key(Proj::Up, 3), "model.layers.3.mlp.up_proj.weight");
        for bad in [
            "model.layers.3.self_attn.up_proj.weight",
            "model.layers.x.mlp.up_proj.weight",
            "model.layers.3.mlp.up_proj.bias",
            "model.norm.weight",
            "model.layers.3.input_layernorm.weight",
        ] {
            assert_eq!(Proj::parse_weight_key(bad), None, "{bad}");
        }
        assert_eq!(Proj::parse("v"), Some(Proj::V));
        assert_eq!(Proj::parse("down_proj"), Some(Proj::Down));
        assert_eq!(Proj::parse("lm_head"), None);
    }
}
