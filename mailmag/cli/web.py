"""`mailmag serve` (the web app, with waitress) and `mailmag purge-pending`."""

from __future__ import annotations

import click

from mailmag.cli.common import AppContext, pass_app, plural, print_json
from mailmag.scheduling import jobs
from mailmag.web import create_app
from mailmag.web.server import make_server


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8025, show_default=True, help="Port (0: any free one).")
@click.option("--threads", type=int, default=None, help="Requests served at once ([web] threads).")
@pass_app
def serve(app: AppContext, host: str, port: int, threads: int | None) -> None:
    """Serve the web app: unsubscribe, preferences, subscribe, archive, org forms.

    waitress runs with the [web] limits: max_request_body_size (a larger body is refused with
    413), connection_limit, channel_timeout and threads."""
    services = app.ready_services()
    web_app = create_app(services)  # refuses to start without MAILMAG_SECRET_KEY (unless demo)
    server = make_server(web_app, host, port, threads)
    click.echo(f"serving on http://{host}:{server.effective_port}/ "
               f"(links in mail use {services.config.mailmag.base_url})", err=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        web_app.extensions["mailmag"].mailer.close()


@click.command(name="purge-pending")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_app
def purge_pending(app: AppContext, as_json: bool) -> None:
    """Delete subscribers who never confirmed ([web] purge_pending_after_hours); `mailmag run`
    does it hourly."""
    purged = jobs.purge_pending(app.ready_services())
    if as_json:
        print_json({"purged": purged})
    else:
        click.echo(f"purged {plural(purged, 'unconfirmed subscriber')}")


commands = [serve, purge_pending]
