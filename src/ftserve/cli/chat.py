"""`ftserve chat`: talk to a base or fine-tuned model, one turn or a conversation, answers streamed as they come."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from ftserve.cli.client import DEFAULT_BASE_URL, ApiKey, BaseUrl, connect
from ftserve.cli.show import output

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types.chat import ChatCompletionMessageParam


def chat(
    model: Annotated[str, typer.Argument(help="A base model or a fine-tuned one (`ftserve models list`).")],
    system: Annotated[str | None, typer.Option(help="A system message to start the conversation with.")] = None,
    message: Annotated[str | None, typer.Option(help="Ask this, print the answer and exit.")] = None,
    temperature: Annotated[float | None, typer.Option(min=0, max=2, help="0 answers greedily.")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="The longest answer, in tokens.")] = None,
    base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None,
) -> None:
    """Chat with a model. With --message, one answer; otherwise a conversation that an empty line or Ctrl-D ends."""
    client = connect(base_url, api_key)
    messages: list[ChatCompletionMessageParam] = [{"role": "system", "content": system}] if system else []
    sampling = Sampling(temperature, max_tokens)
    if message is not None:
        answer(client, model, [*messages, {"role": "user", "content": message}], sampling)
        return
    console = output()
    console.print(f"Chatting with [bold]{escape(model)}[/]. An empty line or Ctrl-D ends the conversation.")
    while True:
        try:
            text = console.input("[bold cyan]you[/] > ")
        except EOFError:
            break
        if not text.strip():
            break
        messages.append({"role": "user", "content": text})
        console.print(f"[bold green]{escape(model)}[/] > ", end="")
        messages.append({"role": "assistant", "content": answer(client, model, messages, sampling)})


@dataclass(frozen=True)
class Sampling:
    """The options the user set; the rest are left to the server."""

    temperature: float | None
    max_tokens: int | None


def answer(client: OpenAI, model: str, messages: list[ChatCompletionMessageParam], sampling: Sampling) -> str:
    """Stream the model's answer to stdout as it is generated, and return it."""
    from openai import omit

    stream = client.chat.completions.create(
        model=model, messages=messages, stream=True,
        temperature=omit if sampling.temperature is None else sampling.temperature,
        max_tokens=omit if sampling.max_tokens is None else sampling.max_tokens,
    )
    pieces = []
    for chunk in stream:
        piece = chunk.choices[0].delta.content if chunk.choices else None
        if piece:
            typer.echo(piece, nl=False)
            pieces.append(piece)
    typer.echo()
    return "".join(pieces)
