"""Every registered model, method, metric and prompt set, by name.

Entries are ``"module:attribute"`` strings imported on first use, so importing this file is
cheap and has no side effects beyond filling the four registries.
"""
from __future__ import annotations

from qbench.registry import Registry

MODELS = Registry("model")
METHODS = Registry("method")
METRICS = Registry("metric")
PROMPTS = Registry("prompt set")

# -- models (qbench/models/specs.py) -----------------------------------------------------------
for _name, _attr, _desc in [
    ("lcm", "LCM", "SimianLuo/LCM_Dreamshaper_v7 (SD1.5), LCM scheduler, 4 steps, 512 px, fp16"),
    ("pcm", "PCM", "SD1.5 + wangfuyun/PCM_Weights smallcfg LoRA, TCD scheduler, 8 steps, 512 px, fp16"),
    ("sdxl-turbo", "SDXL_TURBO", "stabilityai/sdxl-turbo, Euler-ancestral trailing, 4 steps, 512 px, fp16"),
    ("flux-schnell", "FLUX_SCHNELL", "black-forest-labs/FLUX.1-schnell, flow-match Euler shift 1, 4 steps, 1024 px, bf16"),
    ("tiny-lcm", "TINY_LCM", "random-weight tiny twin of lcm (same classes), 64 px, offline"),
    ("tiny-pcm", "TINY_PCM", "random-weight tiny twin of pcm (same classes + tiny LoRA), 64 px, offline"),
    ("tiny-sdxl-turbo", "TINY_SDXL_TURBO", "random-weight tiny twin of sdxl-turbo (same classes), 64 px, offline"),
    ("tiny-flux", "TINY_FLUX", "random-weight tiny twin of flux-schnell (same classes), 64 px, offline"),
]:
    MODELS.register(_name, f"qbench.models.specs:{_attr}", _desc)
# the toy world (issue 6): trained models shipped in qbench/zoo/weights
MODELS.register("toy-lcm", "qbench.zoo.specs:TOY_LCM", "toy world: trained tiny UNet, SD pipeline, LCM scheduler, 4 steps, 32 px, shipped weights, offline")
MODELS.register("toy-flux", "qbench.zoo.specs:TOY_FLUX", "toy world: trained tiny Flux transformer, flow-match Euler, 4 steps, 32 px, shipped weights, offline")

# -- methods (methods/<name>.py, installed as qbench.methods.<name>) -----------------------------
METHODS.register("fp", "qbench.methods.fp:FullPrecision", "full precision: the model's native dtype, no quantization")
METHODS.register("naive", "qbench.methods.naive:Naive", "round-to-nearest W/A quantization (torchao conventions; W4A8, W8A8, W4A16, ...), simulate or real int kernels")
METHODS.register("mixdq", "qbench.methods.mixdq:MixDQ", "MixDQ-style mixed precision: BOS-aware text layers, metric-decoupled sensitivity (SSIM/SQNR), ILP bit allocation under the --bits budget")
METHODS.register("torchao", "qbench.methods.torchao:TorchAO", "torchao's own configs as deployment baselines: -O config=int8dq (W8A8), int8dq_int4w (W4A8), int8wo, intx4wo, int4wo; labelled with torchao's version")
METHODS.register("diffusers", "qbench.methods.diffusers_backends:DiffusersBackend", "diffusers' own quantization backends via PipelineQuantizationConfig: -O backend=quanto|torchao|bitsandbytes_4bit|bitsandbytes_8bit (-O config=, -O components=)")
METHODS.register("external", "qbench.methods.external:External", "a pipeline you quantized with any tool, scored as given: qbench.harness.run(cfg, pipe=...) (Python API only)")
METHODS.register("images", "qbench.methods.images:Images", "images made elsewhere, scored as they are: `qbench score DIR --model M --prompts SPEC` (not for qbench run)")
METHODS.register("qsched", "qbench.methods.qsched:QSched", "Q-Sched: JAQ-calibrated scheduler coefficients over a base quantizer (default naive)",
                 export_module="qbench.methods.qsched_scheduler")  # the scheduler an export names (qbench.export.allowed_imports)

# -- metrics (qbench/metrics/<name>.py) ----------------------------------------------------------
# System measurements need no learned network; the harness takes them on every run.
METRICS.register("latency", "qbench.measure:measure_latency", "end-to-end and per-step latency (s): median and IQR of timed runs after warm-up", system=True)
METRICS.register("peak-memory", "qbench.measure:peak_memory", "peak memory while generating: CUDA peak allocated, or process peak RSS on CPU", system=True)
METRICS.register("model-size", "qbench.models.base:module_nbytes", "exact bytes of the denoiser's stored weights (packed for quantized layers)", system=True)
# Image metrics (issue 5). Options are keys of RunConfig.metric_options; `standin=true` swaps every
# learned network for a tiny random local one (numbers labelled meaningful=False).
METRICS.register("fid", "qbench.metrics.fid:FID", "FID vs real images (fid_reference: folder or .npz), Inception-v3 pool3, protocol fid_protocol (clean)", needs_weights="inception")
METRICS.register("fid-fp", "qbench.metrics.fid:FIDvsFP", "FID vs the full-precision model's images of the same prompts and seeds", needs_weights="inception")
METRICS.register("clip", "qbench.metrics.clip_score:CLIPScore", "CLIP score 100*max(cos,0), open_clip (default OpenAI ViT-L/14)", needs_weights="clip")
METRICS.register("clipiqa", "qbench.metrics.clipiqa:CLIPIQA", 'CLIP-IQA in [0,1] ("Good photo."/"Bad photo."), in-tree, OpenAI RN50 backbone', needs_weights="clipiqa")
METRICS.register("jaq", "qbench.metrics.jaq:JAQMetric", "JAQ = log(CLIPScore/100) + k*CLIP-IQA per image (k=2), reference-free, higher is better; -M jaq_form=set, -M jaq_quality=hpsv2 (second variant)", needs_weights="clip+clipiqa")
# Human preference metrics (issue 20): real weights from the hub or -M paths, stand-ins with standin=true.
METRICS.register("hpsv2", "qbench.metrics.hpsv2:HPSv2", "HPSv2.1: 100*cos of open_clip ViT-H-14 + the HPS v2.1 checkpoint (xswu/HPSv2), higher is better", needs_weights="hpsv2")
METRICS.register("pickscore", "qbench.metrics.pickscore:PickScore", "PickScore: exp(logit_scale)*cos of yuvalkirstain/PickScore_v1 (CLIP-H, transformers), higher is better", needs_weights="pickscore")
METRICS.register("imagereward", "qbench.metrics.imagereward:ImageReward", "ImageReward v1.0: BLIP ViT-L + MED BERT + MLP in-tree, THUDM/ImageReward.pt, ~N(0,1), higher is better", needs_weights="imagereward")
METRICS.register("jaq-hps", "qbench.metrics.jaq:JAQHPSMetric", "JAQ second variant (Q-Sched kclip2): mean(AQ-Map) + k*mean(HPSv2.1/100), k=2; needs spaCy + NLTK", needs_weights="clip ViT-B-16+hpsv2")
METRICS.register("psnr", "qbench.metrics.fidelity:PSNR", "PSNR (dB) vs the full-precision image of the same prompt and seed", needs_weights=None)
METRICS.register("ssim", "qbench.metrics.fidelity:SSIM", "SSIM vs the full-precision image of the same prompt and seed", needs_weights=None)
METRICS.register("lpips", "qbench.metrics.fidelity:LPIPS", "LPIPS v0.1 (AlexNet) vs the full-precision image of the same prompt and seed", needs_weights="lpips")
METRICS.register("toy-acc", "qbench.metrics.toy_acc:ToyAcc", "toy world: rule-based per-attribute (background/colour/size/shape/position) and all-correct accuracy vs the prompt's scene", needs_weights=None)
METRICS.register("fd-toyclip", "qbench.metrics.fd_toyclip:FDToyClip", "toy world: Frechet distance of toy-CLIP image features vs rendered ground truth of the same prompts (lower is better)", needs_weights="toy-clip (shipped)")
METRICS.register("brisque", "qbench.metrics.quality:BRISQUEMetric", "BRISQUE no-reference quality (shipped SVM, offline; lower is better)", needs_weights=None)
METRICS.register("piqe", "qbench.metrics.quality:PIQEMetric", "PIQE no-reference quality (needs the qbench[pyiqa] extra; offline; lower is better)", needs_weights=None)

# -- prompt sets (qbench/prompts.py; data in datasets/) ---------------------------------------------
PROMPTS.register("coco2014-30k", "qbench.prompts:coco2014_30k", "COCO-30k val2014 zero-shot FID prompt set (one caption per image, file order), CC BY 4.0")
PROMPTS.register("coco2017", "qbench.prompts:coco2017", "COCO val2017 captions: first caption of each image, images in id order, CC BY 4.0")
PROMPTS.register("coco2017-calib", "qbench.calibration:coco2017_calib", "98 prompts: the last 100 of coco2017 less the 2 whose caption also occurs among the first 4900 (held out from coco2017:N, N <= 4900 by position and text): Q-Sched calibration, CC BY 4.0")
PROMPTS.register("toy", "qbench.toyworld.prompts:toy_test", "toy world TEST split: 74 held-out scenes (attribute combinations never trained on) x 18 wordings, scene in Prompt.meta")
PROMPTS.register("toy-calib", "qbench.toyworld.prompts:toy_calib", "toy world CALIB split: 35 scenes x 18 wordings, for calibration (disjoint from toy and toy-train)")
PROMPTS.register("toy-train", "qbench.toyworld.prompts:toy_train", "toy world TRAIN split: the 215 scenes the toy models were trained on x 18 wordings")
PROMPTS.register("toy-pair", "qbench.toyworld.prompts:toy_pair_test", "toy world two-object TEST split: held-out pairs (left and right object) x 6 wordings, scene in Prompt.meta")
PROMPTS.register("toy-pair-calib", "qbench.toyworld.prompts:toy_pair_calib", "toy world two-object CALIB split (disjoint from toy-pair and toy-pair-train)")
PROMPTS.register("toy-pair-train", "qbench.toyworld.prompts:toy_pair_train", "toy world two-object TRAIN split")
# Hub prompt sets (qbench/hubprompts.py HUB_SETS: repo, pinned revision, sampling): fetched once into the Hugging Face cache
PROMPTS.register("mjhq-30k", "qbench.hubprompts:mjhq_30k", "MJHQ-30K: 30,000 prompts, 10 categories, meta_data.json order; Hub playgroundai/MJHQ-30K@main (commit recorded)")
PROMPTS.register("mjhq-5k", "qbench.hubprompts:mjhq_5k", "MJHQ-30K as Q-Sched/nunchaku sample it: random.Random(0) shuffle, first 5,000, sorted; Hub playgroundai/MJHQ-30K@main")
PROMPTS.register("sdci", "qbench.hubprompts:sdci", "sDCI (SVDQuant) prompts in file order, first N = Q-Sched calibration; Hub mit-han-lab/svdquant-datasets@35636da44cdc")
PROMPTS.register("parti-prompts", "qbench.hubprompts:parti_prompts", "PartiPrompts (P2): 1,632 prompts, Category/Challenge in meta, file order; Hub nateraw/parti-prompts@944b156abfda")
PROMPTS.register("drawbench", "qbench.hubprompts:drawbench", "DrawBench (Imagen): 200 prompts, row order; Hub shunk031/DrawBench@refs/convert/parquet (commit recorded)")
