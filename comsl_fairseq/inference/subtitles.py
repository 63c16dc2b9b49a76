"""Writers for timed translations: plain text, JSON lines, SubRip (SRT) and WebVTT.

Each writer takes the source name and a list of timed segments (anything with ``start``,
``end`` in seconds and ``text``) and returns the text of one file. Segments with empty
text are skipped in subtitles (a cue must show something) but kept in JSON lines.
"""
import json

FORMATS = ("txt", "jsonl", "srt", "vtt")


def timestamp(seconds: float, decimal: str) -> str:
    """Seconds -> ``HH:MM:SS<decimal>mmm`` (``,`` for SRT, ``.`` for WebVTT)."""
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def to_txt(name: str, segments: list) -> str:
    """One line per segment, the translation only."""
    return "".join(f"{s.text}\n" for s in segments)


def to_jsonl(name: str, segments: list, **fields) -> str:
    """One JSON object per segment: source, index, start/end (s), text, score, ``flag`` when the
    segment has one (why its text looks incomplete), and ``fields``."""
    lines = []
    for i, s in enumerate(segments):
        record = {"source": name, "segment": i, "start": round(s.start, 3), "end": round(s.end, 3),
                  "text": s.text, "score": round(float(s.score), 4), **fields}
        if getattr(s, "flag", ""):
            record["flag"] = s.flag
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return "".join(lines)


def to_srt(name: str, segments: list) -> str:
    """SubRip: numbered cues from 1, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, a blank line after each."""
    cues = [s for s in segments if s.text.strip()]
    return "".join(f"{i}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{s.text.strip()}\n\n"
                   for i, s in enumerate(cues, start=1))


def to_vtt(name: str, segments: list) -> str:
    """WebVTT: the ``WEBVTT`` header, then ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` cues."""
    cues = [s for s in segments if s.text.strip()]
    body = "".join(f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text.strip()}\n\n" for s in cues)
    return "WEBVTT\n\n" + body


WRITERS = {"txt": to_txt, "jsonl": to_jsonl, "srt": to_srt, "vtt": to_vtt}
