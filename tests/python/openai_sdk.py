"""The official OpenAI Python SDK against celroute in Envoy.

Usage: openai_sdk.py BASE_URL. Makes each call an application would make,
and prints what it saw as one JSON object; the Rust test that runs it
(tests/tests/inference.rs) checks it.
"""

import json
import sys

import openai


def main(base_url: str) -> None:
    client = openai.OpenAI(
        base_url=base_url,
        api_key="not-used",
        max_retries=0,
        timeout=20,
        default_headers={"x-tenant": "sdk"},
    )
    out = {}
    messages = [{"role": "user", "content": "why is the sky blue"}]

    raw = client.chat.completions.with_raw_response.create(model="o3-mini", messages=messages)
    completion = raw.parse()
    out["chat"] = {
        "served_by": raw.headers.get("x-served-by"),
        "text": completion.choices[0].message.content,
        "usage": [completion.usage.prompt_tokens, completion.usage.completion_tokens],
    }

    stream = client.chat.completions.create(
        model="llama-3.1-70b",
        messages=messages,
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, chunks = "", None, 0
    for chunk in stream:
        chunks += 1
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens]
    out["stream"] = {"text": text, "usage": usage, "chunks": chunks}

    raw = client.embeddings.with_raw_response.create(model="bge-large-en", input=["a b", "c"])
    embeddings = raw.parse()
    out["embeddings"] = {
        "served_by": raw.headers.get("x-served-by"),
        "count": len(embeddings.data),
        "dimensions": len(embeddings.data[0].embedding),
        "first": embeddings.data[0].embedding[:2],
    }

    out["models"] = [model.id for model in client.models.list().data]

    try:
        client.chat.completions.create(model="text-davinci-003", messages=messages)
        out["denied"] = None
    except openai.APIStatusError as error:
        out["denied"] = {
            "exception": type(error).__name__,
            "status": error.status_code,
            "message": error.message,
            "code": error.code,
            "type": error.type,
            "rule": error.body.get("rule") if isinstance(error.body, dict) else None,
        }

    # A trial tenant's daily token budget (200): the first request spends
    # 205 tokens, the next raises the SDK's rate-limit exception.
    trial = client.with_options(default_headers={"x-tenant": "trial-co", "x-plan": "trial"})
    trial.chat.completions.create(model="o3-mini", messages=messages, max_tokens=200)
    try:
        trial.chat.completions.create(model="o3-mini", messages=messages)
        out["budget"] = None
    except openai.RateLimitError as error:
        out["budget"] = {"status": error.status_code, "message": error.message,
                         "rule": error.body.get("rule") if isinstance(error.body, dict) else None}

    # A tenant over its cloud budget (1.00 an hour; 3,005 tokens at 0.45 per 1k cost 1.35) is moved on premises.
    big = client.with_options(default_headers={"x-tenant": "big-co"})
    served = []
    for _ in range(2):
        raw = big.chat.completions.with_raw_response.create(
            model="o3-mini", messages=messages, max_tokens=3000)
        served.append(raw.headers.get("x-served-by"))
    out["over_cloud_budget"] = served

    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
