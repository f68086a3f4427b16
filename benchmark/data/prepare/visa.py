"""VisA (original layout + split_csv/1cls.csv) -> the same split in MVTec layout:
<out>/<category>/{train/good, test/good, test/bad, ground_truth/bad/<stem>.png}.
Images are copied byte for byte (JPG); masks become 0/255 PNGs (VisA stores class ids) named by
the image's stem. Reading either layout gives the same sample table up to the paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.data.visa import DEFECT, SPLIT_CSV, read_visa_original
from benchmark.api.atomic import staged_directory
from benchmark.errors import GadbenchError


def prepare_visa(src: Path, out: Path) -> dict:
    src, out = Path(src), Path(out)
    if not (src / SPLIT_CSV).is_file():
        raise GadbenchError(f"{src}: no {SPLIT_CSV}; point --src at the VisA folder that holds split_csv/ and the categories")
    table = read_visa_original(src)
    with staged_directory(out) as staging:
        for record in table.to_dict("records"):
            image = Path(record["path"])
            kind = "good" if record["label"] == 0 else DEFECT
            target = staging / record["category"] / record["split"] / kind / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, target)
            if record["mask"]:
                with Image.open(record["mask"]) as pil:
                    mask = np.asarray(pil.convert("L")) > 0
                mask_path = staging / record["category"] / "ground_truth" / DEFECT / f"{image.stem}.png"
                mask_path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
        counts = table.groupby(["split", "label"]).size().rename(lambda x: str(x)).to_dict()
        (staging / "PREPARED.json").write_text(json.dumps({"source": str(src.resolve()), "split": "1cls",
                                                           "images": len(table), "counts": {str(k): v for k, v in counts.items()}}, indent=1))
    return {"images": len(table)}
