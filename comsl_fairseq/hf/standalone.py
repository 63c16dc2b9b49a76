"""Checking that an exported Hugging Face folder stands alone.

:data:`WITHOUT_OUR_STACK` is the start of a Python program (``python -c``) that makes every
import of fairseq, comsl_fairseq or openai-whisper fail, so that the code after it can only
use transformers and the exported folder's own files.
"""

WITHOUT_OUR_STACK = r'''
import importlib.abc, sys
BLOCKED = ("fairseq", "fairseq_cli", "comsl_fairseq", "whisper")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} must not be needed")
sys.meta_path.insert(0, Block())
'''
