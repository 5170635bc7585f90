//! The from-scratch baseline: a small log-mel CNN on the same `[96][64]` patches as YAMNet.
//!
//! Blocks of conv 3x3 -> batch norm -> ReLU -> 2x2 max pool (the last block unpooled), then the
//! mean over time and frequency, dropout and a linear layer. With channels `[24, 48, 96, 96]`
//! it has ~0.14 M parameters and costs ~40 M multiply-adds per patch.

use candle_core::{Module, ModuleT, Tensor};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, Linear, VarBuilder};

#[derive(Debug)]
pub struct Cnn {
    blocks: Vec<(Conv2d, BatchNorm)>,
    out: Linear,
    dropout: super::SeededDropout,
}

impl Cnn {
    /// `seed` drives the training-time dropout masks.
    pub fn new(
        vb: VarBuilder<'_>,
        channels: &[usize],
        classes: usize,
        seed: u64,
    ) -> candle_core::Result<Self> {
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let mut blocks = Vec::new();
        let mut c_in = 1;
        for (i, &c) in channels.iter().enumerate() {
            let conv = candle_nn::conv2d(c_in, c, 3, cfg, vb.pp(format!("conv{i}")))?;
            let bn = candle_nn::batch_norm(c, 1e-5, vb.pp(format!("bn{i}")))?;
            blocks.push((conv, bn));
            c_in = c;
        }
        Ok(Self {
            blocks,
            out: candle_nn::linear(c_in, classes, vb.pp("out"))?,
            dropout: super::SeededDropout::new(0.3, seed),
        })
    }
}

impl Cnn {
    /// The batch norms' running statistics by tensor name (under `prefix`, e.g. `cnn`).
    /// candle's `BatchNorm` updates copies of these, not the `VarMap`'s variables, so a trainer
    /// must save these.
    pub fn running_stats(&self, prefix: &str) -> Vec<(String, Tensor)> {
        self.blocks
            .iter()
            .enumerate()
            .flat_map(|(i, (_, bn))| {
                [
                    (
                        format!("{prefix}.bn{i}.running_mean"),
                        bn.running_mean().clone(),
                    ),
                    (
                        format!("{prefix}.bn{i}.running_var"),
                        bn.running_var().clone(),
                    ),
                ]
            })
            .collect()
    }
}

impl ModuleT for Cnn {
    /// `x`: `[n, 1, frames, mels]` -> logits `[n, classes]`.
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        let last = self.blocks.len().saturating_sub(1);
        for (i, (conv, bn)) in self.blocks.iter().enumerate() {
            x = bn.forward_t(&conv.forward(&x)?, train)?.relu()?;
            if i < last {
                x = x.max_pool2d(2)?;
            }
        }
        let mut x = x.mean(3)?.mean(2)?;
        if train {
            x = self.dropout.apply(&x)?;
        }
        self.out.forward(&x)
    }
}
