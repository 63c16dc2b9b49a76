"""Language codes: CoVoST 2 / Common Voice codes -> mBART-50 language tags.

mBART-50 (Tang et al., 2020) appends 52 language tags to its ``dict.txt`` in the
fixed ML50 order below, then ``<mask>``; its checkpoint's embedding matrix has
exactly those rows. ComSL adds Welsh and Catalan, which mBART-50 lacks, after them.
"""

# The 52 mBART-50 tags, in the order their embedding rows follow dict.txt.
ML50_TAGS = (
    "ar_AR cs_CZ de_DE en_XX es_XX et_EE fi_FI fr_XX gu_IN hi_IN it_IT ja_XX kk_KZ "
    "ko_KR lt_LT lv_LV my_MM ne_NP nl_XX ro_RO ru_RU si_LK tr_TR vi_VN zh_CN af_ZA "
    "az_AZ bn_IN fa_IR he_IL hr_HR id_ID ka_GE km_KH mk_MK ml_IN mn_MN mr_IN pl_PL "
    "ps_AF pt_XX sv_SE sw_KE ta_IN te_IN th_TH tl_XX uk_UA ur_PK xh_ZA gl_ES sl_SI"
).split()

# Appended by ComSL after ``<mask>``: CoVoST 2 has cy and ca (sources of X->En, targets of En->X);
# mBART-50 has no tag for them.
EXTRA_TAGS = ("cy_GB", "ca_ES")

MASK_SYMBOL = "<mask>"

# CoVoST 2 codes whose mBART-50 tag is not simply the unique ML50 tag starting "xx_".
_COVOST_SPECIAL = {"zh-CN": "zh_CN", "sv-SE": "sv_SE", "cy": "cy_GB", "ca": "ca_ES"}

# Languages of CoVoST 2 X->En, grouped by training data as in the paper.
COVOST_X_EN = {
    "high": ("fr", "de", "ca", "es"),
    "medium": ("fa", "it", "ru", "pt", "zh-CN"),
    "low": ("nl", "tr", "et", "mn", "ar", "lv", "sl", "sv-SE", "ta", "ja", "id", "cy"),
}
# All 21 source languages, high to low resource.
COVOST_X_EN_LANGS = tuple(code for group in COVOST_X_EN.values() for code in group)
# The 15 target languages of CoVoST 2 En->X (English Common Voice clips), in CoVoST 2's order.
COVOST_EN_X_LANGS = ("de", "ca", "zh-CN", "fa", "et", "mn", "tr", "ar", "sv-SE", "lv", "sl", "ta", "ja", "id", "cy")


def tag_symbol(tag: str) -> str:
    """The dictionary symbol of a tag: ``fr_XX`` -> ``[fr_XX]``."""
    return f"[{tag}]"


def all_tag_symbols() -> list:
    """Every language-tag symbol our dictionary holds: ML50 order, then the extras."""
    return [tag_symbol(t) for t in ML50_TAGS + list(EXTRA_TAGS)]


def _build_code_table() -> dict:
    table = {}
    by_prefix = {}
    for tag in ML50_TAGS + list(EXTRA_TAGS):
        by_prefix.setdefault(tag.split("_")[0], []).append(tag)
        table[tag] = tag  # the mBART-50 form itself is accepted too
    for prefix, tags in by_prefix.items():
        if len(tags) == 1:
            table[prefix] = tags[0]
    table.update(_COVOST_SPECIAL)
    return table


_CODE_TO_TAG = _build_code_table()


def mbart_tag(code: str) -> str:
    """Map a CoVoST 2 / Common Voice code (``fr``, ``zh-CN``, ``sv-SE``) or an mBART-50
    code (``fr_XX``) to its mBART-50 tag. Raises ``KeyError`` with the known codes."""
    tag = _CODE_TO_TAG.get(code)
    if tag is None:
        known = sorted(c for c in _CODE_TO_TAG if "_" not in c)
        raise KeyError(f"unknown language code {code!r}; known codes: {' '.join(known)}")
    return tag
