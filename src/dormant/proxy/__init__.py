"""The session proxy: wake on request, traffic as activity, access by link and cookie, and
forward-auth for nginx, Caddy and Traefik."""

from dormant.proxy.access import CookieSigner
from dormant.proxy.links import Links
from dormant.proxy.server import ProxySettings, SessionProxy, forward_auth_route

__all__ = ["CookieSigner", "Links", "ProxySettings", "SessionProxy", "forward_auth_route"]
