//! Learning works: the tiny preset's shape, trained with Muon + Lion through the ternary
//! straight-through estimators, learns to copy a random sequence (loss on the copied half near
//! zero) with N = 2 and N = 4 mHC streams. The control: the same model with every block's output
//! projection held at zero (the blocks bypassed: embedding → head only) cannot, since the copied
//! tokens are random and only attention over earlier positions can predict them.

use candle_core::{Device, Tensor};
use model::ModelConfig;
use train::checkpoint::WeightMode;
use train::data::Rng;
use train::model::{GraphOptions, TrainModel};
use train::ops;
use train::optim::{default_group, OptimConfig, Optimizer};

/// Symbols the sequences are drawn from, and the length of the part that is copied.
const SYMBOLS: u32 = 16;
const HALF: usize = 8;
const BATCH: usize = 16;
/// Optimizer steps of each run (the copy loss is below 0.01 well before).
const STEPS: usize = 150;

/// `[B, 2·HALF + 1]`: a separator token, HALF random symbols, then the same symbols again.
fn copy_batch(rng: &mut Rng, device: &Device) -> Tensor {
    let mut data = Vec::with_capacity(BATCH * (2 * HALF + 1));
    for _ in 0..BATCH {
        let seq: Vec<u32> = (0..HALF)
            .map(|_| 1 + (rng.next_u64() % SYMBOLS as u64) as u32)
            .collect();
        data.push(0);
        data.extend(&seq);
        data.extend(&seq);
    }
    Tensor::from_vec(data, (BATCH, 2 * HALF + 1), device).unwrap()
}

/// Mean cross-entropy over the positions whose next token is a copied one.
fn copy_loss(model: &TrainModel, batch: &Tensor) -> Tensor {
    let t = 2 * HALF;
    let inputs = batch.narrow(1, 0, t).unwrap();
    let targets = batch.narrow(1, 1, t).unwrap();
    let logits = model
        .logits(&inputs)
        .unwrap()
        .reshape((BATCH, t, ()))
        .unwrap();
    // Input position HALF predicts the first copied token (target index HALF).
    let copied = logits.narrow(1, HALF, HALF).unwrap();
    let v = copied.dim(2).unwrap();
    let copied = copied.reshape((BATCH * HALF, v)).unwrap();
    let targets = targets
        .narrow(1, HALF, HALF)
        .unwrap()
        .flatten_all()
        .unwrap();
    ops::cross_entropy(&copied, &targets).unwrap()
}

/// Trains `steps` steps and returns the copy loss of a fresh batch, averaged over 4 batches.
fn train_copy(streams: usize, bypass_blocks: bool, steps: usize) -> f32 {
    let device = Device::Cpu;
    let config = ModelConfig {
        vocab_size: 64,
        context_length: 2 * HALF + 1,
        mhc_streams: streams,
        ..ModelConfig::preset("tiny").unwrap()
    };
    let options = GraphOptions {
        weights: WeightMode::Ternary,
        mtp_heads: 0,
    };
    let model = TrainModel::init(&config, options, 11, &device).unwrap();
    let mut params = Vec::new();
    for (name, var) in model.parameters() {
        let output = name.ends_with("attn_output.weight") || name.ends_with("ffn_down.weight");
        if bypass_blocks && output {
            var.set(&var.as_tensor().zeros_like().unwrap()).unwrap();
            continue;
        }
        params.push((name.clone(), var.clone(), default_group(name, var.dims())));
    }
    let optim = OptimConfig {
        muon_lr: 0.02,
        lion_lr: 1e-3,
        ..OptimConfig::default()
    };
    let mut optimizer = Optimizer::new(params, optim).unwrap();
    let mut rng = Rng::new(5);
    for step in 0..steps {
        let batch = copy_batch(&mut rng, &device);
        let grads = copy_loss(&model, &batch).backward().unwrap();
        // Constant learning rate, then a short linear decay over the last fifth.
        let decay_from = steps * 4 / 5;
        let factor = if step < decay_from {
            1.0
        } else {
            1.0 - (step - decay_from) as f64 / (steps - decay_from) as f64 * 0.9
        };
        optimizer.step(&grads, factor).unwrap();
    }
    let mut sum = 0.0;
    for _ in 0..4 {
        sum += copy_loss(&model, &copy_batch(&mut rng, &device))
            .to_scalar::<f32>()
            .unwrap();
    }
    sum / 4.0
}

#[test]
fn tiny_ternary_model_learns_to_copy_with_two_and_four_streams() {
    let chance = (SYMBOLS as f32).ln();
    for streams in [2, 4] {
        let loss = train_copy(streams, false, STEPS);
        eprintln!("N={streams}: copy loss {loss:.4} (chance {chance:.3})");
        assert!(
            loss < 0.05,
            "N={streams}: copy loss {loss} is not near zero"
        );
    }
}

#[test]
fn a_model_that_bypasses_its_blocks_cannot_copy() {
    let chance = (SYMBOLS as f32).ln();
    let loss = train_copy(2, true, STEPS);
    eprintln!("blocks bypassed: copy loss {loss:.4} (chance {chance:.3})");
    assert!(loss > 0.8 * chance, "bypassed model reached {loss}");
}
