"""Reference settings: how many normal and abnormal references a cell gets.

  N<k>         k normal references (train/good)            the official `--n_shots k --a_shots 0`
  N<k>+A<j>    k normal and j abnormal references (masks)  `--n_shots k --a_shots j`; +A0 is N<k>
  N0+A<j>      abnormal references only: the normal patches are taken from the abnormal
               references' own normal region (mask 0), as the official forward does at n_shot 0
  Nall(+A<j>)  every train/good image as normal references   `--n_shots -1`
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from benchmark.errors import GadbenchError

ALL = -1  # k_normal of Nall: every train/good image (the official code's -1)


@dataclass(frozen=True)
class Setting:
    k_normal: int
    k_abnormal: int = 0

    @property
    def all_normal(self) -> bool:
        return self.k_normal == ALL

    @property
    def normal_text(self) -> str:
        return "all" if self.all_normal else str(self.k_normal)

    @property
    def label(self) -> str:
        return f"N{self.normal_text}" + (f"+A{self.k_abnormal}" if self.k_abnormal else "")

    @property
    def latex(self) -> str:
        normal = "\\mathrm{all}" if self.all_normal else self.normal_text
        return f"$N^{{{normal}}}$" + (f"+$A^{{{self.k_abnormal}}}$" if self.k_abnormal else "")

    @property
    def order(self) -> tuple[int, int]:
        """Sort key: by k (Nall after every k), then by j."""
        return (10**9 if self.all_normal else self.k_normal, self.k_abnormal)

    @property
    def official_arguments(self) -> str:
        """The official NAGL test script's arguments for this setting."""
        return f"--n_shots {self.k_normal} --a_shots {self.k_abnormal}"


def parse_setting(text: str) -> Setting:
    match = re.fullmatch(r"\s*N\^?(\d+|all)\s*(?:\+\s*A\^?(\d+))?\s*", str(text))
    if not match:
        raise GadbenchError(f"setting {text!r} not understood; write N<k>, N<k>+A<j>, N0+A<j> or Nall(+A<j>),"
                            " e.g. N1, N4+A2, N0+A1, Nall")
    k_normal = ALL if match[1] == "all" else int(match[1])
    k_abnormal = int(match[2] or 0)
    if k_normal == 0 and not k_abnormal:
        raise GadbenchError(f"setting {text!r}: no reference at all; N0 needs abnormal references (N0+A<j>)")
    return Setting(k_normal, k_abnormal)
