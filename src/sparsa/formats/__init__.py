"""Compressed weight formats: plain data with exact byte sizes and validated I/O."""

from sparsa.formats.base import Format
from sparsa.formats.bitmap import Bitmap
from sparsa.formats.block_int8 import BlockSparseInt8
from sparsa.formats.block_sparse import BlockSparse
from sparsa.formats.kquant import KQuant
from sparsa.formats.nm import NM
from sparsa.formats.quant import Quant
from sparsa.formats.registry import FORMATS, get_format, register_format
from sparsa.formats.sign_mask import SignMask
from sparsa.formats.sparse_quant import SparseQuant
from sparsa.formats.spqr import SpQR
from sparsa.formats.task_vector import CompressedTaskVector

__all__ = ["FORMATS", "Bitmap", "BlockSparse", "BlockSparseInt8", "CompressedTaskVector", "Format", "KQuant", "NM", "Quant",
           "SignMask", "SparseQuant", "SpQR", "get_format", "register_format"]
