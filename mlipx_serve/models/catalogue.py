"""The built-in models: mlipx's list of MLIPs with downloadable weights, and two without
machine learning (``emt``, ``lj``) that need nothing installed. Data: what each model is
(a definition), named by its key."""

from __future__ import annotations

from typing import Any

from mlipx_serve.models.definitions import (
    Device,
    GenericASECalculator,
    PretrainedASECalculator,
    with_name,
)


def _mace(model: str, spec: str | None = None) -> GenericASECalculator:
    return GenericASECalculator(
        module="mace.calculators",
        class_name="mace_mp",
        kwargs={"model": model},
        device=Device.AUTO,
        spec=spec,
        extra=["mace"],
    )


def _sevenn(**kwargs: Any) -> GenericASECalculator:
    # mlipx imports sevenn.sevennet_calculator, a deprecated alias that warns.
    return GenericASECalculator(
        module="sevenn.calculator",
        class_name="SevenNetCalculator",
        kwargs=kwargs,
        device=Device.AUTO,
        extra=["sevenn"],
    )


def _orb(loader: str) -> PretrainedASECalculator:
    return PretrainedASECalculator(
        module="orb_models.forcefield.pretrained",
        class_name=loader,
        device=Device.AUTO,
        calculator="orb_models.forcefield.calculator:ORBCalculator",
        calculator_takes_device=True,
        extra=["orb"],
    )


def _builtin_models() -> dict[str, Any]:
    """mlipx's ``models.py.jinja2`` list, with downloadable weights, plus two without ML.

    mlipx points several entries at files in its "mlipx-hub" checkout
    (``../../models/...``); here they name the published weights that the
    package downloads itself, so they work from any directory. mlipx's "orca"
    entry is left out: it drives the ORCA program, not an MLIP.
    """
    models: dict[str, Any] = {
        "mace-mpa-0": _mace("medium-mpa-0", spec="mace-mpa-0"),
        "mace-mp-0": _mace("medium"),
        "mace-matpes-pbe-0": _mace("mace-matpes-pbe-0"),
        "7net-0": _sevenn(model="7net-0"),
        "7net-mf-ompa-mpa": _sevenn(model="7net-mf-ompa", modal="mpa"),
        "orb-v2": _orb("orb_v2"),
        "orb-v3": _orb("orb_v3_conservative_inf_omat"),
        # CHGNet evaluates a batch in one call (models/batch.py): its workers take 16
        "chgnet": GenericASECalculator(
            module="chgnet.model", class_name="CHGNetCalculator", spec="chgnet", extra=["chgnet"],
            serving={"batch_size": 16, "batch_wait": 0.01},
        ),
        "mattersim": GenericASECalculator(
            module="mattersim.forcefield",
            class_name="MatterSimCalculator",
            device=Device.AUTO,
            spec="mattersim",
            extra=["mattersim"],
        ),
        "grace-2l-omat": GenericASECalculator(
            module="tensorpotential.calculator",
            class_name="grace_fm",
            kwargs={"model": "GRACE-2L-OMAT"},
            spec="grace-2l-omat",
            extra=["grace"],
        ),
        "matpes-pbe": PretrainedASECalculator(
            module="matgl",
            class_name="load_model",
            kwargs={"path": "TensorNet-MatPES-PBE-v2025.1-PES"},
            # PESCalculator defaults to GPa; ASE expects eV/A^3.
            calculator="matgl.ext.ase:PESCalculator",
            calculator_kwargs={"stress_unit": "eV/A3"},
            extra=["matpes"],
        ),
        # Gated on Hugging Face: accept the licence and `hf auth login` first.
        "meta-uma-sm": PretrainedASECalculator(
            module="fairchem.core.calculate.pretrained_mlip",
            class_name="get_predict_unit",
            kwargs={"model_name": "uma-s-1p1"},
            device=Device.AUTO,
            calculator="fairchem.core:FAIRChemCalculator",
            calculator_kwargs={"task_name": "oc20"},
            extra=["fairchem"],
        ),
        "pet-mad": GenericASECalculator(
            module="pet_mad.calculator",
            class_name="PETMADCalculator",
            kwargs={"version": "latest"},
            device=Device.AUTO,
            spec="pet-mad",
            extra=["pet-mad"],
        ),
        "emt": GenericASECalculator(module="ase.calculators.emt", class_name="EMT"),
        "lj": GenericASECalculator(module="ase.calculators.lj", class_name="LennardJones"),
    }
    return {key: with_name(model, key) for key, model in models.items()}




BUILTIN_MODELS: dict[str, Any] = _builtin_models()
