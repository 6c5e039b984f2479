"""The conformance suite's server scenarios, served by the official Python SDK (both protocol eras).

`@modelcontextprotocol/conformance` drives a server that offers fixed names (tools `test_*`,
resources `test://...`, prompts `test_*_prompt`). Its own reference server is not published to
a registry, so this is an equivalent written for the gateway's tests from the scenarios'
documented requirements: the handshake era asks through server-to-client requests, 2026-07-28
through `InputRequiredResult` rounds (SEP-2322).

    python conformance.py stdio
    python conformance.py http PORT [--omit-result-type] [--garble]

`--omit-result-type` strips `resultType` from every complete 2026-07-28 result, as deployed
servers written before the field existed do (the spec says an absent one means complete).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
AUDIO = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
MISSING_CAPABILITY = -32021
SECRET = secrets.token_bytes(32)
GARBLE = "GARBLE-THIS-BODY"

Ctx = Any


def text(value: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=value)])


def modern(ctx: Ctx) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def caps(ctx: Ctx) -> types.ClientCapabilities:
    return ctx.session.client_capabilities or types.ClientCapabilities()


def sign(payload: dict[str, Any]) -> str:
    data = json.dumps(payload, sort_keys=True)
    mac = hmac.new(SECRET, data.encode(), hashlib.sha256).hexdigest()
    return json.dumps({"data": data, "mac": mac})


def verify(state: str | None) -> dict[str, Any] | None:
    try:
        envelope = json.loads(state or "")
        data, mac = envelope["data"], envelope["mac"]
        if hmac.compare_digest(mac, hmac.new(SECRET, data.encode(), hashlib.sha256).hexdigest()):
            payload = json.loads(data)
            return payload if isinstance(payload, dict) else None
    except (ValueError, KeyError, TypeError):
        pass
    return None


def elicit(message: str, field: str, kind: str = "string") -> types.ElicitRequest:
    schema = {"type": "object", "properties": {field: {"type": kind}}, "required": [field]}
    return types.ElicitRequest(params=types.ElicitRequestFormParams(message=message, requested_schema=schema))


def sample(prompt: str, max_tokens: int = 100) -> types.CreateMessageRequest:
    message = types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))
    params = types.CreateMessageRequestParams(messages=[message], max_tokens=max_tokens)
    return types.CreateMessageRequest(params=params)


def roots() -> types.ListRootsRequest:
    return types.ListRootsRequest()


def ask(requests: dict[str, types.InputRequest], state: dict[str, Any] | None = None) -> types.InputRequiredResult:
    return types.InputRequiredResult(input_requests=requests, request_state=sign(state) if state else None)


def answered(value: Any, field: str) -> str:
    content = value.get("content") if isinstance(value, dict) else getattr(value, "content", None)
    if isinstance(content, dict):
        found = content.get(field)
        return found if isinstance(found, str) else "unknown"
    return "unknown"


def raw(responses: types.InputResponses | None) -> dict[str, Any]:
    """The client's answers as plain JSON (the SDK parses them into models)."""
    out: dict[str, Any] = {}
    for key, value in (responses or {}).items():
        out[key] = (
            value.model_dump(by_alias=True, mode="json", exclude_none=True) if hasattr(value, "model_dump") else value
        )
    return out


EMPTY: dict[str, Any] = {"type": "object", "properties": {}}
SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}
DEFAULTS_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {
            "type": "string",
            "description": "User status",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
    "required": [],
}
ENUMS_SCHEMA = {
    "type": "object",
    "properties": {
        "untitledSingle": {
            "type": "string",
            "description": "Select one option",
            "enum": ["option1", "option2", "option3"],
        },
        "titledSingle": {
            "type": "string",
            "description": "Select one option with titles",
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ],
        },
        "legacyEnum": {
            "type": "string",
            "description": "Select one option (legacy)",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {
            "type": "array",
            "description": "Select multiple options",
            "minItems": 1,
            "maxItems": 3,
            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
        },
        "titledMulti": {
            "type": "array",
            "description": "Select multiple options with titles",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            },
        },
    },
    "required": [],
}

TOOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "test_simple_text": ("Tests simple text content response", EMPTY),
    "test_image_content": ("Tests image content response", EMPTY),
    "test_audio_content": ("Tests audio content response", EMPTY),
    "test_embedded_resource": ("Tests embedded resource content response", EMPTY),
    "test_multiple_content_types": ("Tests response with multiple content types (text, image, resource)", EMPTY),
    "test_tool_with_logging": ("Tests tool that emits log messages during execution", EMPTY),
    "test_tool_with_progress": ("Tests tool that reports progress notifications", EMPTY),
    "test_error_handling": ("Tests error response handling", EMPTY),
    "test_sampling": (
        "Tests server-initiated sampling (LLM completion request)",
        {"type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]},
    ),
    "test_elicitation": (
        "Tests server-initiated elicitation (user input request)",
        {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]},
    ),
    "test_elicitation_sep1034_defaults": ("Tests elicitation with default values per SEP-1034", EMPTY),
    "test_elicitation_sep1330_enums": ("Tests elicitation with enum schema improvements per SEP-1330", EMPTY),
    "json_schema_2020_12_tool": ("Tool with JSON Schema 2020-12 features (SEP-1613)", SCHEMA_2020_12),
    "test_missing_capability": ("Test tool requiring sampling", EMPTY),
    "test_input_required_result_elicitation": ("MRTR: elicitation request", EMPTY),
    "test_input_required_result_sampling": ("MRTR: sampling request", EMPTY),
    "test_input_required_result_list_roots": ("MRTR: roots/list request", EMPTY),
    "test_input_required_result_request_state": ("MRTR: requestState", EMPTY),
    "test_input_required_result_multiple_inputs": ("MRTR: multiple input requests", EMPTY),
    "test_input_required_result_multi_round": ("MRTR: multi-round workflow", EMPTY),
    "test_input_required_result_tampered_state": ("MRTR: HMAC-signed requestState", EMPTY),
    "test_input_required_result_capabilities": ("MRTR: respects client capabilities", EMPTY),
    "test_streaming_elicitation": ("Diagnostic: a progress notification, then the result", EMPTY),
    "test_logging_tool": ("Diagnostic: logs only when the request opted in", EMPTY),
    "test_garbled": ("Answers a body that is not JSON when served with --garble", EMPTY),
}
CACHED = {"ttl_ms": 300000, "cache_scope": "public"}


async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    tools = [
        types.Tool(name=name, description=description, input_schema=schema)
        for name, (description, schema) in TOOLS.items()
    ]
    return types.ListToolsResult(tools=tools, **CACHED)


async def _legacy_ask(ctx: Ctx, request: types.InputRequest, result_type: type[Any]) -> Any:
    return await ctx.session.send_request(request, result_type)


async def _mrtr(
    ctx: Ctx, name: str, params: types.CallToolRequestParams
) -> types.CallToolResult | types.InputRequiredResult:
    responses = raw(params.input_responses)
    state = params.request_state
    if name == "test_input_required_result_elicitation":
        if params.input_responses is not None and not isinstance(responses.get("user_name", {}), dict):
            raise MCPError(types.INVALID_PARAMS, "inputResponses.user_name must be an elicitation result")
        if "user_name" in responses:
            return text(f"Hello, {answered(responses['user_name'], 'name')}!")
        return ask({"user_name": elicit("What is your name?", "name")})
    if name == "test_input_required_result_sampling":
        if "sample_request" in responses:
            content = responses["sample_request"].get("content") or {}
            return text(f"Sampling result: {content.get('text', 'no response')}")
        return ask({"sample_request": sample("What is the capital of France?")})
    if name == "test_input_required_result_list_roots":
        if "roots_request" in responses:
            return text(f"Found {len(responses['roots_request'].get('roots') or [])} root(s)")
        return ask({"roots_request": roots()})
    if name == "test_input_required_result_request_state":
        payload = verify(state)
        confirm = responses.get("confirm", {}).get("content") or {}
        if payload and payload.get("kind") == "request-state" and confirm.get("ok") is True:
            return text("state-ok: requestState validated")
        return ask({"confirm": elicit("Please confirm", "ok", "boolean")}, {"kind": "request-state"})
    if name == "test_input_required_result_multiple_inputs":
        payload = verify(state)
        if (
            payload
            and payload.get("kind") == "multiple-inputs"
            and {"user_name", "greeting", "client_roots"} <= set(responses)
        ):
            greeting = (responses["greeting"].get("content") or {}).get("text", "Hello there!")
            found = len(responses["client_roots"].get("roots") or [])
            return text(f"Name: {answered(responses['user_name'], 'name')}; Greeting: {greeting}; Roots: {found}")
        return ask(
            {
                "user_name": elicit("What is your name?", "name"),
                "greeting": sample("Generate a greeting", 50),
                "client_roots": roots(),
            },
            {"kind": "multiple-inputs"},
        )
    if name == "test_input_required_result_multi_round":
        payload = verify(state) or {}
        if payload.get("round") == 1 and "step1" in responses:
            return ask(
                {"step2": elicit("Step 2: What is your favorite color?", "color")},
                {"round": 2, "name": answered(responses["step1"], "name")},
            )
        if payload.get("round") == 2 and "step2" in responses:
            return text(
                f"Multi-round complete for {payload.get('name', 'friend')} who likes "
                f"{answered(responses['step2'], 'color')}"
            )
        return ask({"step1": elicit("Step 1: What is your name?", "name")}, {"round": 1})
    if name == "test_input_required_result_tampered_state":
        if state is not None:
            payload = verify(state)
            if payload is None:
                raise MCPError(types.INVALID_PARAMS, "requestState integrity check failed")
            if payload.get("kind") == "tamper-test" and "confirm" in responses:
                return text("integrity-ok: state verified")
        return ask({"confirm": elicit("Please confirm", "ok", "boolean")}, {"kind": "tamper-test"})
    # test_input_required_result_capabilities
    declared = caps(ctx)
    if responses:
        return text(f"capabilities-ok: received {','.join(responses)}")
    requests: dict[str, types.InputRequest] = {}
    if declared.elicitation is not None:
        requests["elicit_input"] = elicit("Elicitation input", "value")
    if declared.sampling is not None:
        requests["sample_input"] = sample("Sample request", 50)
    if not requests:
        return text("No supported capabilities declared")
    return ask(requests, {"kind": "capabilities-test"})


async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult | types.InputRequiredResult:
    name = params.name
    args = params.arguments or {}
    if name == "test_simple_text":
        return text("This is a simple text response for testing.")
    if name == "test_image_content":
        return types.CallToolResult(content=[types.ImageContent(type="image", data=IMAGE, mime_type="image/png")])
    if name == "test_audio_content":
        return types.CallToolResult(content=[types.AudioContent(type="audio", data=AUDIO, mime_type="audio/wav")])
    if name == "test_embedded_resource":
        resource = types.TextResourceContents(
            uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
        )
        return types.CallToolResult(content=[types.EmbeddedResource(type="resource", resource=resource)])
    if name == "test_multiple_content_types":
        resource = types.TextResourceContents(
            uri="test://mixed-content-resource",
            mime_type="application/json",
            text=json.dumps({"test": "data", "value": 123}),
        )
        return types.CallToolResult(
            content=[
                types.TextContent(type="text", text="Multiple content types test:"),
                types.ImageContent(type="image", data=IMAGE, mime_type="image/png"),
                types.EmbeddedResource(type="resource", resource=resource),
            ]
        )
    if name == "test_tool_with_logging":
        for line in ("Tool execution started", "Tool processing data", "Tool execution completed"):
            await ctx.session.send_notification(
                types.LoggingMessageNotification(
                    params=types.LoggingMessageNotificationParams(level="info", data=line)
                ),
                related_request_id=ctx.request_id,
            )
            await anyio.sleep(0.05)
        return text("Tool with logging executed successfully")
    if name == "test_tool_with_progress":
        token = (
            (ctx.meta or {}).get("progressToken", 0)
            if isinstance(ctx.meta, dict)
            else getattr(ctx.meta, "progress_token", 0)
        )
        for step in (0, 50, 100):
            await ctx.session.report_progress(step, 100, f"Completed step {step} of 100")
            if step < 100:
                await anyio.sleep(0.05)
        return text(str(token))
    if name == "test_garbled":
        return text(GARBLE)
    if name == "test_streaming_elicitation":
        await ctx.session.report_progress(50, 100)
        return text("Streaming complete")
    if name == "test_logging_tool":
        if modern(ctx):  # 2026-07-28: delivered only when this request's _meta asked for a level
            await ctx.session.send_log_message("info", "Diagnostic trace logging activated")
        return text("Logging evaluated")
    if name == "test_error_handling":
        return types.CallToolResult(
            is_error=True,
            content=[types.TextContent(type="text", text="This tool intentionally returns an error for testing")],
        )
    if name == "test_missing_capability":
        if caps(ctx).sampling is None:
            raise MCPError(
                MISSING_CAPABILITY, "MissingRequiredClientCapabilityError", {"requiredCapabilities": {"sampling": {}}}
            )
        return text("Success")
    if name.startswith("test_input_required_result_"):
        return await _mrtr(ctx, name, params)
    if name == "json_schema_2020_12_tool":
        return text(f"JSON Schema 2020-12 tool called with: {json.dumps(args)}")
    if name in (
        "test_sampling",
        "test_elicitation",
        "test_elicitation_sep1034_defaults",
        "test_elicitation_sep1330_enums",
    ):
        return await _legacy_input(ctx, name, args)
    raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {name}")


async def _legacy_input(ctx: Ctx, name: str, args: dict[str, Any]) -> types.CallToolResult:
    try:
        if name == "test_sampling":
            result = await ctx.session.send_request(sample(str(args.get("prompt", ""))), types.CreateMessageResult)
            content = result.content
            return text(f"LLM response: {getattr(content, 'text', 'No response')}")
        if name == "test_elicitation":
            response = {"type": "string", "description": "User's response"}
            schema = {"type": "object", "properties": {"response": response}, "required": ["response"]}
            request = types.ElicitRequest(
                params=types.ElicitRequestFormParams(message=str(args.get("message", "")), requested_schema=schema)
            )
            answer = await ctx.session.send_request(request, types.ElicitResult)
            return text(f"User response: action={answer.action}, content={json.dumps(answer.content or {})}")
        message, schema = (
            ("Please review and update the form fields with defaults", DEFAULTS_SCHEMA)
            if name == "test_elicitation_sep1034_defaults"
            else ("Please select options from the enum fields", ENUMS_SCHEMA)
        )
        request = types.ElicitRequest(params=types.ElicitRequestFormParams(message=message, requested_schema=schema))
        answer = await ctx.session.send_request(request, types.ElicitResult)
        return text(f"Elicitation completed: action={answer.action}, content={json.dumps(answer.content or {})}")
    except Exception as exc:  # the scenario reads the tool's words either way
        return text(f"Input request not supported or error: {exc}")


# ------------------------------------------------------------------ resources

RESOURCES = [
    types.Resource(
        uri="test://static-text",
        name="static-text",
        title="Static Text Resource",
        description="A static text resource for testing",
        mime_type="text/plain",
    ),
    types.Resource(
        uri="test://static-binary",
        name="static-binary",
        title="Static Binary Resource",
        description="A static binary resource (image) for testing",
        mime_type="image/png",
    ),
    types.Resource(
        uri="test://watched-resource",
        name="watched-resource",
        title="Watched Resource",
        description="A resource that can be subscribed to",
        mime_type="text/plain",
    ),
]
TEMPLATE = "test://template/{id}/data"
subscriptions: set[str] = set()


async def list_resources(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
    return types.ListResourcesResult(resources=RESOURCES, **CACHED)


async def list_templates(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourceTemplatesResult:
    template = types.ResourceTemplate(
        uri_template=TEMPLATE,
        name="template",
        title="Resource Template",
        description="A resource template with parameter substitution",
        mime_type="application/json",
    )
    return types.ListResourceTemplatesResult(resource_templates=[template], **CACHED)


async def read_resource(ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    uri = str(params.uri)
    contents: list[types.TextResourceContents | types.BlobResourceContents]
    if uri == "test://static-text":
        contents = [
            types.TextResourceContents(
                uri=uri, mime_type="text/plain", text="This is the content of the static text resource."
            )
        ]
    elif uri == "test://static-binary":
        contents = [types.BlobResourceContents(uri=uri, mime_type="image/png", blob=IMAGE)]
    elif uri == "test://watched-resource":
        contents = [types.TextResourceContents(uri=uri, mime_type="text/plain", text="Watched resource content")]
    elif uri.startswith("test://template/") and uri.endswith("/data"):
        ident = uri[len("test://template/") : -len("/data")]
        contents = [
            types.TextResourceContents(
                uri=uri,
                mime_type="application/json",
                text=json.dumps({"id": ident, "templateTest": True, "data": f"Data for ID: {ident}"}),
            )
        ]
    else:
        code = types.INVALID_PARAMS if modern(ctx) else -32002
        raise MCPError(code, f"Resource not found: {uri}", {"uri": uri})
    return types.ReadResourceResult(contents=contents, ttl_ms=300000, cache_scope="private")


async def subscribe(ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
    subscriptions.add(str(params.uri))
    return types.EmptyResult()


async def unsubscribe(ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    subscriptions.discard(str(params.uri))
    return types.EmptyResult()


# ------------------------------------------------------------------ prompts, completion, logging

PROMPTS = [
    types.Prompt(
        name="test_simple_prompt", title="Simple Test Prompt", description="A simple prompt without arguments"
    ),
    types.Prompt(
        name="test_prompt_with_arguments",
        title="Prompt With Arguments",
        description="A prompt with required arguments",
        arguments=[
            types.PromptArgument(name="arg1", description="First test argument", required=True),
            types.PromptArgument(name="arg2", description="Second test argument", required=True),
        ],
    ),
    types.Prompt(
        name="test_prompt_with_embedded_resource",
        title="Prompt With Embedded Resource",
        description="A prompt that includes an embedded resource",
        arguments=[types.PromptArgument(name="resourceUri", description="URI of the resource to embed", required=True)],
    ),
    types.Prompt(name="test_prompt_with_image", title="Prompt With Image", description="A prompt with image content"),
    types.Prompt(name="test_input_required_result_prompt", description="MRTR: prompt that requires elicitation input"),
]


def user(content: Any) -> types.PromptMessage:
    return types.PromptMessage(role="user", content=content)


async def list_prompts(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=PROMPTS, **CACHED)


async def get_prompt(
    ctx: Ctx, params: types.GetPromptRequestParams
) -> types.GetPromptResult | types.InputRequiredResult:
    name, args = params.name, params.arguments or {}
    if name == "test_simple_prompt":
        return types.GetPromptResult(
            messages=[user(types.TextContent(type="text", text="This is a simple prompt for testing."))]
        )
    if name == "test_prompt_with_arguments":
        return types.GetPromptResult(
            messages=[
                user(
                    types.TextContent(
                        type="text", text=f"Prompt with arguments: arg1='{args.get('arg1')}', arg2='{args.get('arg2')}'"
                    )
                )
            ]
        )
    if name == "test_prompt_with_embedded_resource":
        resource = types.TextResourceContents(
            uri=args.get("resourceUri", "test://example"),
            mime_type="text/plain",
            text="Embedded resource content for testing.",
        )
        return types.GetPromptResult(
            messages=[
                user(types.EmbeddedResource(type="resource", resource=resource)),
                user(types.TextContent(type="text", text="Please process the embedded resource above.")),
            ]
        )
    if name == "test_prompt_with_image":
        return types.GetPromptResult(
            messages=[
                user(types.ImageContent(type="image", data=IMAGE, mime_type="image/png")),
                user(types.TextContent(type="text", text="Please analyze the image above.")),
            ]
        )
    if name == "test_input_required_result_prompt":
        responses = raw(params.input_responses)
        if "user_context" in responses:
            return types.GetPromptResult(
                messages=[
                    user(
                        types.TextContent(
                            type="text", text=f"Prompt with context: {answered(responses['user_context'], 'context')}"
                        )
                    )
                ]
            )
        return ask({"user_context": elicit("What context should the prompt use?", "context")})
    raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {name}")


async def complete(ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
    return types.CompleteResult(completion=types.Completion(values=[], total=0, has_more=False))


async def set_level(ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
    return types.EmptyResult()


def build() -> Server[Any]:
    server: Server[Any] = Server(
        "mcp-conformance-fixture",
        version="1.0.0",
        get_tool_input_schema=lambda name: TOOLS[name][1] if name in TOOLS else None,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_completion=complete,
    )
    server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
    return server


class OmitResultType:
    """ASGI middleware: drop `"resultType": "complete"` from JSON and SSE bodies (a pre-2026-07-28 habit);
    with `garble`, a body carrying GARBLE is replaced by one that is not JSON."""

    def __init__(self, app: Any, omit: bool, garble: bool) -> None:
        self.app = app
        self.omit = omit
        self.garble = garble

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def strip(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [(k, v) for k, v in message["headers"] if k.lower() != b"content-length"]
            elif message["type"] == "http.response.body" and message.get("body"):
                if self.omit:
                    message["body"] = (
                        message["body"]
                        .replace(b',"resultType":"complete"', b"")
                        .replace(b'"resultType":"complete",', b"")
                    )
                if self.garble and GARBLE.encode() in message["body"]:
                    message["body"] = (
                        b"{this is not json"
                        if message["body"].startswith(b"{")
                        else b"event: message\ndata: {this is not json\n\n"
                    )
            await send(message)

        await self.app(scope, receive, strip)


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    server = build()
    if mode == "stdio":
        from mcp.server.stdio import stdio_server

        async def serve() -> None:
            async with stdio_server() as (read, write):
                options = server.create_initialization_options(
                    NotificationOptions(resources_changed=True, tools_changed=True, prompts_changed=True)
                )
                await server.run(read, write, options)

        anyio.run(serve)
        return
    import uvicorn

    port = int(sys.argv[2])
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )
    app: Any = server.streamable_http_app(transport_security=security)
    if "--omit-result-type" in sys.argv or "--garble" in sys.argv:
        app = OmitResultType(app, "--omit-result-type" in sys.argv, "--garble" in sys.argv)
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)  # bound before the line: a client that reads it queues in the backlog, never races startup
    print(f"listening on port {port}", file=sys.stderr, flush=True)
    server_ = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    anyio.run(server_.serve, [sock])


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
