"""Bad input never reaches torch raw and is never silent: a table of wrong calls through the Python API and the command
line, each of which must fail with an ``LD3MError`` (CLI: one line on stderr, exit status 2) whose message names the
argument or the file. Cases are cheap: every check fails before any real work."""
from __future__ import annotations

import json
import re
import types

import pytest
import torch

import ld3m_fast
from ld3m_fast.cli import main as cli
from ld3m_fast.errors import LD3MError
from tests.helpers.compvis_style import CompVisStyleLDM
from tests.helpers.toy import toy_data


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """What the cases work on: a model, its latents and contexts, toy data, and files good and bad."""
    tmp = tmp_path_factory.mktemp("bad")
    model = CompVisStyleLDM(seed=1)
    images, labels = toy_data(size=32)
    Z = torch.randn(2, 3, 8, 8)
    c = model.get_learned_conditioning(torch.tensor([0, 1]))
    a_file = tmp / "a_file.txt"
    a_file.write_text("not a folder")
    (tmp / "empty.safetensors").write_bytes(b"")
    (tmp / "garbage.safetensors").write_bytes(b"\x12\x00\x00\x00\x00\x00\x00\x00{\"a\": nonsense")
    (tmp / "random.ckpt").write_bytes(bytes(range(256)) * 8)
    (tmp / "unknown.json").write_text(json.dumps({"bogus": 1}))
    (tmp / "bad_value.json").write_text(json.dumps({"ipc": 0}))
    result = ld3m_fast.distill((images, labels), None, ipc=1, iterations=1, batch_real=4, net_width=8, progress=False)
    good = tmp / "set"
    result.save(good)
    bad_json = tmp / "bad_json"
    result.save(bad_json)
    (bad_json / "distilled.json").write_text("{not json")
    truncated = tmp / "truncated"
    result.save(truncated)
    data = (truncated / "distilled.safetensors").read_bytes()
    (truncated / "distilled.safetensors").write_bytes(data[: len(data) // 2])
    no_key = tmp / "no_key"
    result.save(no_key)
    info = json.loads((no_key / "distilled.json").read_text())
    del info["mean"]
    (no_key / "distilled.json").write_text(json.dumps(info))
    folder = tmp / "images" / "cat"
    folder.mkdir(parents=True)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return types.SimpleNamespace(tmp=tmp, unknown_settings=tmp / "unknown.json", bad_value_settings=tmp / "bad_value.json",
                                 model=model, Z=Z, c=c, images=images, labels=labels, a_file=a_file,
                                 good_set=good, bad_json=bad_json, truncated=truncated, no_key=no_key,
                                 image_folder=tmp / "images")


def render(e, **kw):
    args = dict(model=e.model, Z=e.Z, c=e.c, steps=4, seed=0)
    args.update(kw)
    return ld3m_fast.render(args.pop("model"), args.pop("Z"), args.pop("c"), args.pop("steps"), **args)


def sample(e, sampler=None, **kw):
    args = dict(S=4, batch_size=2, shape=(3, 8, 8), conditioning=e.c, x_T=e.Z, verbose=False)
    args.update(kw)
    return ld3m_fast.DDIMSampler(e.model, **(sampler or {})).sample(**args)


def distill(e, model=None, **kw):
    args = dict(ipc=1, iterations=1, batch_real=4, net_width=8, progress=False)
    args.update(kw)
    train = args.pop("train", (e.images, e.labels))
    return ld3m_fast.distill(train, model, **args)


def latent(e, **kw):
    return distill(e, e.model, **dict(dict(steps=4), **kw))


def evaluate(e, **kw):
    args = dict(archs=("ConvNet",), repeats=1, epochs=1, progress=False, net_kwargs={"width": 8})
    args.update(kw)
    distilled = args.pop("distilled", (e.images, e.labels))
    return ld3m_fast.evaluate(distilled, args.pop("test", (e.images, e.labels)), **args)


NAN, INF = float("nan"), float("inf")

# (id, call, a regex the message must contain: the argument or the file)
API = [
    # --- render: tensors -------------------------------------------------------------------------------------------
    ("render Z list", lambda e: render(e, Z=[[1.0]]), r"Z must be a torch.Tensor"),
    ("render Z int", lambda e: render(e, Z=e.Z.long()), r"Z has dtype"),
    ("render Z 3-D", lambda e: render(e, Z=e.Z[0]), r"Z must be \(N, C, h, w\)"),
    ("render Z channels", lambda e: render(e, Z=torch.randn(2, 4, 8, 8)), r"Z has 4 channels"),
    ("render Z NaN", lambda e: render(e, Z=torch.full_like(e.Z, NAN)), r"Z has \d+ NaN"),
    ("render Z Inf", lambda e: render(e, Z=torch.full_like(e.Z, INF)), r"Z has \d+ NaN/Inf"),
    ("render Z 1e30", lambda e: render(e, Z=torch.full_like(e.Z, 1e30)), r"Z"),
    ("render Z float64 vs model", lambda e: render(e, Z=e.Z.double(), c=e.c.double()), r"model's weights are"),
    ("render c 2-D", lambda e: render(e, c=e.c[:, 0]), r"c must be \(N, L, D\)"),
    ("render c count", lambda e: render(e, c=e.c[:1]), r"c has 1 embeddings"),
    ("render c width", lambda e: render(e, c=torch.randn(2, 1, 16)), r"c has 1 tokens of width 16"),
    ("render c tokens", lambda e: render(e, c=e.c.repeat(1, 3, 1)), r"c has 3 tokens"),
    ("render c NaN", lambda e: render(e, c=torch.full_like(e.c, NAN)), r"c has \d+ NaN"),
    ("render c dtype", lambda e: render(e, c=e.c.double()), r"Z is torch.float32 but c is torch.float64"),
    ("render c int", lambda e: render(e, c=e.c.long()), r"c has dtype"),
    ("render empty", lambda e: render(e, Z=e.Z[:0], c=e.c[:0]), r"Z is empty"),
    ("render noise shape", lambda e: render(e, noise=torch.randn(1, 3, 8, 8)), r"noise has shape"),
    ("render model None", lambda e: render(e, model=None), r"cannot render with a NoneType"),
    ("render model object", lambda e: render(e, model=object()), r"cannot render with a object"),
    # --- render: settings ------------------------------------------------------------------------------------------
    ("render steps 0", lambda e: render(e, steps=0), r"steps=0"),
    ("render steps -3", lambda e: render(e, steps=-3), r"steps=-3"),
    ("render steps 1.5", lambda e: render(e, steps=1.5), r"steps must be an int"),
    ("render steps str", lambda e: render(e, steps="10"), r"steps must be an int"),
    ("render steps True", lambda e: render(e, steps=True), r"steps must be an int"),
    ("render steps 1001", lambda e: render(e, steps=1001), r"steps=1001"),
    ("render steps 3", lambda e: render(e, steps=3), r"steps=3 gives stride"),
    ("render steps 1 official", lambda e: render(e, steps=1), r"steps=1 with skip='official'"),
    ("render guidance str", lambda e: render(e, guidance="3"), r"guidance='3'"),
    ("render guidance -1", lambda e: render(e, guidance=-1.0), r"guidance=-1.0"),
    ("render guidance NaN", lambda e: render(e, guidance=NAN), r"guidance=nan"),
    ("render guidance Inf", lambda e: render(e, guidance=INF), r"guidance=inf"),
    ("render skip", lambda e: render(e, skip="bogus"), r"skip='bogus'"),
    ("render eta -1", lambda e: render(e, eta=-1.0), r"eta=-1.0"),
    ("render eta str", lambda e: render(e, eta="0"), r"eta='0'"),
    ("render budget words", lambda e: render(e, memory_budget="lots"), r"memory_budget='lots'"),
    ("render budget negative", lambda e: render(e, memory_budget=-1), r"memory_budget=-1"),
    ("render budget zero", lambda e: render(e, memory_budget=0), r"memory_budget=0"),
    ("render budget bool", lambda e: render(e, memory_budget=True), r"memory_budget"),
    ("render budget inf", lambda e: render(e, memory_budget=INF), r"memory_budget=inf"),
    ("render budget 1e400", lambda e: render(e, memory_budget=1e400), r"memory_budget=inf"),
    ("render budget 1e400 str", lambda e: render(e, memory_budget="1e400GB"), r"memory_budget='1e400GB'"),
    ("render budget tiny", lambda e: render(e, memory_budget=1000), r"memory_budget=.*too small"),
    ("render budget list", lambda e: render(e, memory_budget=[1]), r"memory_budget"),
    ("render seed str", lambda e: render(e, seed="abc"), r"seed='abc'"),
    ("render seed float", lambda e: render(e, seed=1.9), r"seed=1.9"),
    ("render seed 2**70", lambda e: render(e, seed=2**70), r"seed=1180591620717411303424"),
    ("render seed negative", lambda e: render(e, seed=-1), r"seed=-1"),
    ("render seed and generator", lambda e: render(e, generator=torch.Generator()), r"either seed or generator"),
    ("render chunk 0", lambda e: render(e, chunk_size=0), r"chunk_size=0"),
    ("render chunk str", lambda e: render(e, chunk_size="4"), r"chunk_size='4'"),
    ("render chunk float", lambda e: render(e, chunk_size=2.5), r"chunk_size=2.5"),
    ("render keep -1", lambda e: render(e, keep_steps=-1), r"keep_steps=-1"),
    ("render stride 0", lambda e: render(e, latent_stride=0), r"latent_stride=0"),
    ("render stride with eta", lambda e: render(e, latent_stride=2, eta=0.5), r"latent_stride=2 needs eta=0"),
    ("render backend unknown", lambda e: render(e, backend="fast"), r"backend='fast'"),
    ("render backend cuda on cpu", lambda e: render(e, backend="cuda"), r"backend='cuda'"),
    ("render normalize length", lambda e: render(e, normalize=((0.5, 0.5), (0.2, 0.2))), r"normalize"),
    ("render normalize std 0", lambda e: render(e, normalize=((0.5,) * 3, (0.0,) * 3)), r"normalize"),
    ("render normalize shape", lambda e: render(e, normalize=(0.5,)), r"normalize"),
    ("render guidance without uc", lambda e: render(e, model=ld3m_fast.LatentModel(
        e.model.apply_model, lambda z: e.model.first_stage_model.quantize(z)[0],
        lambda z: e.model.first_stage_model.decode(z, force_not_quantize=True))), r"guidance=3.0 needs"),
    # --- the drop-in sampler -------------------------------------------------------------------------------------
    ("sampler unknown option", lambda e: ld3m_fast.DDIMSampler(e.model, bogus=1), r"\['bogus'\]"),
    ("sampler sample unknown option", lambda e: sample(e, bogus=1), r"\['bogus'\]"),
    ("sampler mask", lambda e: sample(e, mask=torch.ones(1)), r"mask="),
    ("sampler temperature", lambda e: sample(e, temperature=0.5), r"temperature=0.5"),
    ("sampler S 0", lambda e: sample(e, S=0), r"steps=0"),
    ("sampler budget", lambda e: sample(e, sampler=dict(memory_budget="lots")), r"memory_budget='lots'"),
    ("sampler x_T NaN", lambda e: sample(e, x_T=torch.full_like(e.Z, NAN)), r"x_T has \d+ NaN"),
    ("sampler conditioning 2-D", lambda e: sample(e, conditioning=e.c[:, 0]), r"conditioning must be \(N, L, D\)"),
    ("sampler no conditioning", lambda e: sample(e, conditioning=None), r"conditioning=None"),
    ("sampler discretize", lambda e: ld3m_fast.DDIMSampler(e.model).make_schedule(4, ddim_discretize="quad"),
     r"ddim_discretize='quad'"),
    # --- distill: data ---------------------------------------------------------------------------------------------
    ("distill images 3-D", lambda e: distill(e, train=(e.images[:, 0], e.labels)), r"train images must be"),
    ("distill images int", lambda e: distill(e, train=(e.images.int(), e.labels)), r"train images has dtype"),
    ("distill images 0-255", lambda e: distill(e, train=(e.images * 255, e.labels)), r"train images.*0\.\.255"),
    ("distill images [-1,1]", lambda e: distill(e, train=(e.images * 2 - 1, e.labels)), r"train images.*\(x \+ 1\)"),
    ("distill images NaN", lambda e: distill(e, train=(e.images.clone().fill_(NAN), e.labels)), r"train images.*NaN"),
    ("distill labels float", lambda e: distill(e, train=(e.images, e.labels.float())), r"train labels has dtype"),
    ("distill labels count", lambda e: distill(e, train=(e.images, e.labels[:-1])), r"train labels"),
    ("distill labels negative", lambda e: distill(e, train=(e.images, e.labels - 1)), r"negative class indices"),
    ("distill empty class", lambda e: distill(e, train=(e.images, torch.where(e.labels == 1, 2, e.labels))),
     r"classes \[1\] have no images"),
    ("distill empty set", lambda e: distill(e, train=(e.images[:0], e.labels[:0])), r"train images is empty"),
    ("distill not data", lambda e: distill(e, train=42), r"train must be"),
    ("distill dataset name", lambda e: distill(e, train="no-such-dataset"), r"no-such-dataset"),
    ("distill data channels vs model", lambda e: distill(e, e.model, train=(e.images[:, :1], e.labels)),
     r"encoder cannot take the data's 1-channel"),
    # --- distill: settings -----------------------------------------------------------------------------------------
    ("distill ipc 0", lambda e: distill(e, ipc=0), r"ipc=0"),
    ("distill ipc float", lambda e: distill(e, ipc=1.5), r"ipc=1.5"),
    ("distill ipc str", lambda e: distill(e, ipc="1"), r"ipc='1'"),
    ("distill ipc too large", lambda e: distill(e, ipc=1000), r"ipc=1000 is larger"),
    ("distill algorithm", lambda e: distill(e, algorithm="xyz"), r"algorithm='xyz'"),
    ("distill unknown knob", lambda e: distill(e, learning_rate=1.0), r"learning_rate"),
    ("distill preset", lambda e: distill(e, preset="foo"), r"preset='foo'"),
    ("distill iterations -1", lambda e: distill(e, iterations=-1), r"iterations=-1"),
    ("distill iterations float", lambda e: distill(e, iterations=1.5), r"iterations=1.5"),
    ("distill lr 0", lambda e: distill(e, lr=0.0), r"lr=0.0"),
    ("distill lr -1", lambda e: distill(e, lr=-1.0), r"lr=-1.0"),
    ("distill lr NaN", lambda e: distill(e, lr=NAN), r"lr=nan"),
    ("distill lr str", lambda e: distill(e, lr="1"), r"lr='1'"),
    ("distill momentum -0.1", lambda e: distill(e, momentum=-0.1), r"momentum=-0.1"),
    ("distill momentum 1", lambda e: distill(e, momentum=1.0), r"momentum=1.0"),
    ("distill momentum 1.5", lambda e: distill(e, momentum=1.5), r"momentum=1.5"),
    ("distill batch_real 0", lambda e: distill(e, batch_real=0), r"batch_real=0"),
    ("distill init", lambda e: distill(e, init="foo"), r"init='foo'"),
    ("distill seed str", lambda e: distill(e, seed="abc"), r"seed='abc'"),
    ("distill seed float", lambda e: distill(e, seed=1.9), r"seed=1.9"),
    ("distill seed 2**70", lambda e: distill(e, seed=2**70), r"seed=1180591620717411303424"),
    ("distill net", lambda e: distill(e, net="ResNet99"), r"ResNet99"),
    ("distill net width 0", lambda e: distill(e, net_width=0), r"net_width=0"),
    ("distill net depth 0", lambda e: distill(e, net_depth=0), r"net_depth=0"),
    ("distill net depth too deep", lambda e: distill(e, net_depth=9), r"depth=9"),
    ("distill net norm", lambda e: distill(e, net_norm="foo"), r"norm='foo'"),
    ("distill dsa str", lambda e: distill(e, dsa="yes"), r"dsa='yes'"),
    ("distill checkpoint_every 0", lambda e: distill(e, checkpoint_every=0), r"checkpoint_every=0"),
    ("distill eval_every without test", lambda e: distill(e, eval_every=1), r"eval_every needs test"),
    ("distill eval_every 0", lambda e: distill(e, eval_every=0, test=(e.images, e.labels)), r"eval_every=0"),
    ("distill eval_repeats 0", lambda e: distill(e, eval_repeats=0), r"eval_repeats=0"),
    ("distill eval_epochs 0", lambda e: distill(e, eval_epochs=0), r"eval_epochs=0"),
    ("distill eval_archs", lambda e: distill(e, eval_archs=("Bogus",)), r"Bogus"),
    ("distill eval_archs empty", lambda e: distill(e, eval_archs=()), r"eval_archs"),
    ("distill device cuda", lambda e: distill(e, device="cuda") if not torch.cuda.is_available() else
     distill(e, device="cuda:99"), r"device='cuda"),
    ("distill device bogus", lambda e: distill(e, device="tpu9"), r"device='tpu9'"),
    ("distill checkpoint_dir file", lambda e: distill(e, checkpoint_dir=e.a_file), r"checkpoint_dir=.*is a file"),
    ("distill resume", lambda e: distill(e, resume="maybe"), r"resume='maybe'"),
    ("distill experts with dm", lambda e: distill(e, experts=e.tmp), r"experts= is given but algorithm='dm'"),
    ("distill mtt without experts", lambda e: distill(e, algorithm="mtt"), r"experts"),
    ("distill mtt missing experts", lambda e: distill(e, algorithm="mtt", experts=e.tmp / "none"), r"none"),
    ("distill mtt empty experts", lambda e: distill(e, algorithm="mtt", experts=e.tmp), r"expert_\*"),
    ("distill dc lr_net 0", lambda e: distill(e, algorithm="dc", lr_net=0.0), r"lr_net=0.0"),
    ("distill dc outer_loop 0", lambda e: distill(e, algorithm="dc", outer_loop=0), r"outer_loop=0"),
    ("distill dc inner_loop -1", lambda e: distill(e, algorithm="dc", inner_loop=-1), r"inner_loop=-1"),
    ("distill dc batch_train 0", lambda e: distill(e, algorithm="dc", batch_train=0), r"batch_train=0"),
    # --- distill: latent-only settings in pixel space -----------------------------------------------------------
    ("pixel steps", lambda e: distill(e, steps=0), r"steps set for a pixel-space run"),
    ("pixel skip", lambda e: distill(e, skip="bogus"), r"skip set for a pixel-space run"),
    ("pixel guidance", lambda e: distill(e, guidance=2.0), r"guidance set for a pixel-space run"),
    ("pixel eta", lambda e: distill(e, eta=0.1), r"eta set for a pixel-space run"),
    ("pixel memory_budget", lambda e: distill(e, memory_budget="1GB"), r"memory_budget set"),
    ("pixel chunk_size", lambda e: distill(e, chunk_size=2), r"chunk_size set"),
    ("pixel class_ids", lambda e: distill(e, class_ids=(0, 1, 2, 3)), r"class_ids set"),
    ("pixel encode_input", lambda e: distill(e, encode_input="signed"), r"encode_input set"),
    ("pixel syn_mean", lambda e: distill(e, syn_mean=(0.5,) * 3, syn_std=(0.2,) * 3), r"syn_mean, syn_std set"),
    ("pixel backend", lambda e: distill(e, backend="torch"), r"backend set"),
    # --- distill: latent settings ---------------------------------------------------------------------------------
    ("latent steps 0", lambda e: latent(e, steps=0), r"steps=0"),
    ("latent steps 3", lambda e: latent(e, steps=3), r"steps=3"),
    ("latent guidance str", lambda e: latent(e, guidance="3"), r"guidance='3'"),
    ("latent skip", lambda e: latent(e, skip="bogus"), r"skip='bogus'"),
    ("latent eta -1", lambda e: latent(e, eta=-1.0), r"eta=-1.0"),
    ("latent budget inf", lambda e: latent(e, memory_budget=INF), r"memory_budget=inf"),
    ("latent budget words", lambda e: latent(e, memory_budget="lots"), r"memory_budget='lots'"),
    ("latent chunk 0", lambda e: latent(e, chunk_size=0), r"chunk_size=0"),
    ("latent encode_input", lambda e: latent(e, encode_input="foo"), r"encode_input='foo'"),
    ("latent backend", lambda e: latent(e, backend="fast"), r"backend='fast'"),
    ("latent syn_mean length", lambda e: latent(e, syn_mean=(0.5, 0.5), syn_std=(0.2, 0.2)), r"syn_mean"),
    ("latent syn_std 0", lambda e: latent(e, syn_mean=(0.5,) * 3, syn_std=(0.2, 0.0, 0.2)), r"syn_std"),
    ("latent syn_std negative", lambda e: latent(e, syn_mean=(0.5,) * 3, syn_std=(-0.2,) * 3), r"syn_std"),
    ("latent syn_mean NaN", lambda e: latent(e, syn_mean=(NAN,) * 3, syn_std=(0.2,) * 3), r"syn_mean"),
    ("latent syn_mean alone", lambda e: latent(e, syn_mean=(0.5,) * 3), r"syn_mean and syn_std together"),
    ("latent class_ids length", lambda e: latent(e, class_ids=(0, 1)), r"class_ids"),
    ("latent class_ids range", lambda e: latent(e, class_ids=(0, 1, 2, 99)), r"classes 0\.\.9.*\[99\]"),
    ("latent class_ids negative", lambda e: latent(e, class_ids=(0, 1, 2, -1)), r"class_ids"),
    ("latent model name", lambda e: distill(e, "no-such-model"), r"no-such-model"),
    # --- models ------------------------------------------------------------------------------------------------------
    ("load_ldm name", lambda e: ld3m_fast.load_ldm("no-such-model"), r"no-such-model"),
    ("load_ldm missing file", lambda e: ld3m_fast.load_ldm(str(e.tmp / "missing.safetensors")), r"missing.safetensors"),
    ("load_ldm empty file", lambda e: ld3m_fast.load_ldm(str(e.tmp / "empty.safetensors")), r"empty.safetensors"),
    ("load_ldm corrupt safetensors", lambda e: ld3m_fast.load_ldm(str(e.tmp / "garbage.safetensors")),
     r"garbage.safetensors"),
    ("load_ldm random bytes", lambda e: ld3m_fast.load_ldm(str(e.tmp / "random.ckpt")), r"random.ckpt"),
    ("load_ldm folder without configs", lambda e: ld3m_fast.load_ldm(str(e.image_folder)), r"images"),
    ("load_ldm dtype", lambda e: ld3m_fast.load_ldm("tiny", dtype="int8"), r"dtype='int8'"),
    ("load_ldm dtype int", lambda e: ld3m_fast.load_ldm("tiny", dtype=torch.int32), r"dtype=torch.int32"),
    ("load_ldm device", lambda e: ld3m_fast.load_ldm("tiny", device="tpu9"), r"device='tpu9'"),
    ("load_ldm checkpoint with path", lambda e: ld3m_fast.load_ldm(str(e.tmp / "random.ckpt"), checkpoint="x.ckpt"),
     r"checkpoint= goes with an architecture name"),
    ("load_ldm checkpoint missing", lambda e: ld3m_fast.load_ldm("tiny", checkpoint=e.tmp / "nope.ckpt"), r"nope.ckpt"),
    ("load_ldm checkpoint corrupt", lambda e: ld3m_fast.load_ldm("tiny", checkpoint=e.tmp / "random.ckpt"),
     r"random.ckpt"),
    ("load_ldm name type", lambda e: ld3m_fast.load_ldm(42), r"name_or_path must be"),
    ("build_ldm config", lambda e: ld3m_fast.build_ldm("nope"), r"unknown model 'nope'"),
    ("build_ldm bad size", lambda e: ld3m_fast.build_ldm(ld3m_fast.LDMConfig(image_size=30)), r"image_size=30"),
    ("save_ldm format", lambda e: ld3m_fast.save_ldm(ld3m_fast.build_ldm("tiny"), e.tmp / "m", format="xyz"),
     r"format='xyz'"),
    ("save_ldm not a model", lambda e: ld3m_fast.save_ldm(e.model, e.tmp / "m.safetensors"), r"save_ldm saves"),
    ("optimize not a model", lambda e: ld3m_fast.optimize(e.model), r"optimize expects"),
    ("optimize attention", lambda e: ld3m_fast.optimize(ld3m_fast.build_ldm("tiny"), attention="fast"),
     r"attention='fast'"),
    # --- distilled sets ----------------------------------------------------------------------------------------------
    ("DistilledSet missing folder", lambda e: ld3m_fast.DistilledSet.load(e.tmp / "nope"), r"nope"),
    ("DistilledSet a file", lambda e: ld3m_fast.DistilledSet.load(e.a_file), r"a_file.txt"),
    ("DistilledSet bad JSON", lambda e: ld3m_fast.DistilledSet.load(e.bad_json), r"distilled.json.*not valid JSON"),
    ("DistilledSet truncated", lambda e: ld3m_fast.DistilledSet.load(e.truncated), r"distilled.safetensors"),
    ("DistilledSet missing key", lambda e: ld3m_fast.DistilledSet.load(e.no_key), r"lacks \['mean'\]"),
    # --- evaluate ----------------------------------------------------------------------------------------------------
    ("evaluate archs", lambda e: evaluate(e, archs=("Bogus",)), r"Bogus"),
    ("evaluate archs empty", lambda e: evaluate(e, archs=()), r"archs is empty"),
    ("evaluate repeats 0", lambda e: evaluate(e, repeats=0), r"repeats"),
    ("evaluate epochs 0", lambda e: evaluate(e, epochs=0), r"epochs"),
    ("evaluate protocol", lambda e: evaluate(e, protocol="foo"), r"protocol='foo'"),
    ("evaluate shapes", lambda e: evaluate(e, test=(e.images[:, :, :16, :16], e.labels)), r"test images are"),
    ("evaluate test 0-255", lambda e: evaluate(e, test=(e.images * 255, e.labels)), r"test images.*0\.\.255"),
    ("evaluate normalize length", lambda e: evaluate(e, normalize=((0.5,) * 2, (0.2,) * 2)), r"normalize"),
    ("evaluate normalize std 0", lambda e: evaluate(e, normalize=((0.5,) * 3, (0.0,) * 3)), r"normalize"),
    ("evaluate num_classes", lambda e: evaluate(e, num_classes=1), r"num_classes"),
    ("evaluate not data", lambda e: evaluate(e, distilled=42), r"distilled"),
    # --- experts -----------------------------------------------------------------------------------------------------
    ("experts num 0", lambda e: ld3m_fast.train_experts((e.images, e.labels), e.tmp / "ex", num_experts=0),
     r"num_experts=0"),
    ("experts epochs 0", lambda e: ld3m_fast.train_experts((e.images, e.labels), e.tmp / "ex", epochs=0), r"epochs=0"),
    ("experts out file", lambda e: ld3m_fast.train_experts((e.images, e.labels), e.a_file), r"out_dir=.*is a file"),
    ("experts net", lambda e: ld3m_fast.train_experts((e.images, e.labels), e.tmp / "ex", net="Bogus"), r"Bogus"),
    ("ExpertBuffer missing", lambda e: ld3m_fast.ExpertBuffer(e.tmp / "nope"), r"nope"),
    # --- networks, augmentation, data --------------------------------------------------------------------------------
    ("get_network name", lambda e: ld3m_fast.get_network("Bogus", 3, 10, 32), r"Bogus"),
    ("get_network channels", lambda e: ld3m_fast.get_network("ConvNet", 0, 10, 32), r"channels"),
    ("get_network size", lambda e: ld3m_fast.get_network("ConvNet", 3, 10, 4), r"image_size=4"),
    ("get_network norm", lambda e: ld3m_fast.get_network("ConvNet", 3, 10, 32, norm="foo"), r"norm='foo'"),
    ("get_network depth for vgg", lambda e: ld3m_fast.get_network("VGG11", 3, 10, 32, depth=3), r"depth=3"),
    ("dsa strategy", lambda e: ld3m_fast.dsa(e.images, "color_wobble"), r"wobble"),
    ("dsa 3-D", lambda e: ld3m_fast.dsa(e.images[0]), r"x must be a 4-D tensor"),
    ("dsa int", lambda e: ld3m_fast.dsa(e.images.long()), r"x has dtype"),
    ("load_dataset name", lambda e: ld3m_fast.load_dataset("no-such-dataset"), r"no-such-dataset"),
    ("load_dataset imagenet without root", lambda e: ld3m_fast.load_dataset("imagenette"), r"imagenette.*root"),
    ("load_dataset root missing", lambda e: ld3m_fast.load_dataset("imagenette", root=e.tmp / "nope"), r"nope"),
    ("load_dataset split", lambda e: ld3m_fast.load_dataset("fashion-mnist", split="valid"), r"split"),
    ("load_dataset unreadable image", lambda e: ld3m_fast.load_dataset(str(e.image_folder), resolution=16),
     r"broken.png"),
]

# (id, argv, a regex the one-line error must contain)
CLI = [
    ("distill out is a file", lambda e: ["distill", "--out", str(e.a_file)], r"--out=.*is a file"),
    ("distill unknown model", lambda e: ["distill", "--ldm", "no-such-model", "--out", str(e.tmp / "o1")],
     r"no-such-model"),
    ("distill unknown model, old flag", lambda e: ["distill", "--model", "no-such-model", "--out", str(e.tmp / "o1b")],
     r"no-such-model"),
    ("distill model checkpoint missing", lambda e: ["distill", "--ldm", "tiny", "--ldm-checkpoint",
                                                    str(e.tmp / "x.ckpt"), "--out", str(e.tmp / "o2")], r"x.ckpt"),
    ("distill checkpoint without model", lambda e: ["distill", "--ldm-checkpoint", "x.ckpt", "--out",
                                                    str(e.tmp / "o3")], r"--ldm-checkpoint"),
    ("distill config missing", lambda e: ["distill", "--config", str(e.tmp / "nope.json")], r"nope.json"),
    ("distill config bad JSON", lambda e: ["distill", "--config", str(e.bad_json / "distilled.json")],
     r"distilled.json"),
    ("distill config unknown key", lambda e: ["distill", "--config", str(e.unknown_settings), "--out",
                                              str(e.tmp / "o18")], r"unknown settings \['bogus'\]"),
    ("distill config bad value", lambda e: ["distill", "--config", str(e.bad_value_settings), "--out",
                                            str(e.tmp / "o19")], r"ipc=0"),
    ("distill unknown data", lambda e: ["distill", "--data", "no-such-dataset", "--out", str(e.tmp / "o4")],
     r"no-such-dataset"),
    ("distill missing folder", lambda e: ["distill", "--data", str(e.tmp / "nope/"), "--out", str(e.tmp / "o5")],
     r"nope"),
    ("distill imagenet without root", lambda e: ["distill", "--data", "imagewoof", "--out", str(e.tmp / "o6")],
     r"root"),
    ("distill unreadable image", lambda e: ["distill", "--data", str(e.image_folder), "--resolution", "16", "--out",
                                            str(e.tmp / "o7")], r"broken.png"),
    ("distill pixel steps", lambda e: ["distill", "--steps", "0", "--out", str(e.tmp / "o8")], r"steps set"),
    ("distill pixel skip", lambda e: ["distill", "--skip", "paper", "--out", str(e.tmp / "o9")], r"skip set"),
    ("distill experts with dm", lambda e: ["distill", "--experts", str(e.tmp), "--out", str(e.tmp / "o10")],
     r"experts"),
    ("distill ipc 0", lambda e: ["distill", "--ipc", "0", "--out", str(e.tmp / "o11")], r"ipc=0"),
    ("distill momentum 1", lambda e: ["distill", "--momentum", "1", "--out", str(e.tmp / "o12")], r"momentum=1.0"),
    ("distill lr nan", lambda e: ["distill", "--lr", "nan", "--out", str(e.tmp / "o13")], r"lr=nan"),
    ("distill device cuda", lambda e: ["distill", "--device", "cuda:99", "--out", str(e.tmp / "o14")],
     r"device='cuda:99'"),
    ("distill net", lambda e: ["distill", "--net", "Bogus", "--out", str(e.tmp / "o15")], r"Bogus"),
    ("distill mtt without experts", lambda e: ["distill", "--algorithm", "mtt", "--out", str(e.tmp / "o16")],
     r"experts"),
    ("distill latent budget", lambda e: ["distill", "--ldm", "tiny", "--data", "fashion-mnist", "--memory-budget",
                                         "lots", "--out", str(e.tmp / "o17")], r"memory_budget='lots'"),
    ("eval missing folder", lambda e: ["eval", str(e.tmp / "nope")], r"nope"),
    ("eval bad JSON", lambda e: ["eval", str(e.bad_json)], r"distilled.json"),
    ("eval truncated", lambda e: ["eval", str(e.truncated)], r"distilled.safetensors"),
    ("eval archs", lambda e: ["eval", str(e.good_set), "--archs", "Bogus"], r"Bogus"),
    ("eval repeats 0", lambda e: ["eval", str(e.good_set), "--repeats", "0"], r"repeats"),
    ("eval data mismatch", lambda e: ["eval", str(e.good_set), "--data", "fashion-mnist"], r"images are"),
    ("eval out in a file", lambda e: ["eval", str(e.good_set), "--out", str(e.a_file / "t.json")], r"--out"),
    ("experts out file", lambda e: ["experts", "--out", str(e.a_file)], r"--out=.*is a file"),
    ("experts epochs 0", lambda e: ["experts", "--out", str(e.tmp / "ex1"), "--epochs", "0"], r"epochs=0"),
    ("experts net", lambda e: ["experts", "--out", str(e.tmp / "ex2"), "--net", "Bogus"], r"Bogus"),
    ("train-prior config", lambda e: ["train-prior", "--out", str(e.tmp / "p.safetensors"), "--config", "nope"],
     r"nope"),
    ("train-prior out folder", lambda e: ["train-prior", "--out", str(e.tmp)], r"is a folder"),
    ("demo out file", lambda e: ["demo", "--out", str(e.a_file)], r"--out=.*is a file"),
]


@pytest.mark.parametrize("name, call, match", API, ids=[c[0] for c in API])
def test_api_bad_input_fails_clearly(env, name, call, match):
    with pytest.raises(LD3MError, match=match):
        call(env)


@pytest.mark.parametrize("name, argv, match", CLI, ids=[c[0] for c in CLI])
def test_cli_bad_input_is_one_line_and_exit_2(env, capsys, name, argv, match):
    assert cli(argv(env)) == 2
    err = capsys.readouterr().err
    lines = [line for line in re.split(r"[\r\n]+", err) if line.strip()]  # progress bars may come before it
    assert re.match(r"(ld3m-fast \S+: )?error: ", lines[-1]) and "Traceback" not in err, err  # ours, or argparse's
    assert re.search(match, lines[-1]), err


def test_the_table_is_large_and_a_bug_keeps_its_traceback(monkeypatch):
    assert len(API) + len(CLI) >= 150 and len(CLI) >= 30
    from ld3m_fast import cli as cli_module

    def broken(args):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(cli_module, "_check", broken)
    with pytest.raises(ZeroDivisionError):  # not turned into a one-line 'error:' (exit 2)
        cli_module.main(["check"])
