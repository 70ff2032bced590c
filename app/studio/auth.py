"""Sign-in for a shared server: Streamlit's OIDC (`st.login`) when secrets configure it.

Off unless ``.streamlit/secrets.toml`` (or a file named by Streamlit's
``secrets.files`` option) has an ``[auth]`` section; `make run` on a laptop
asks nobody to sign in. When on, no page is drawn, and so no download
button exists, before the visitor has signed in with the identity provider.
"""

from __future__ import annotations

import streamlit as st


def _auth_section():
    try:
        return st.secrets.get("auth")
    except Exception:  # noqa: BLE001  (no secrets file at all: sign-in is off)
        return None


def enabled() -> bool:
    """Whether this server asks for sign-in."""
    return bool(_auth_section())


def _provider() -> str | None:
    """None for a single provider configured in [auth] itself, else the first [auth.NAME]."""
    section = _auth_section() or {}
    if "client_id" in section:
        return None
    names = [k for k, v in section.items() if hasattr(v, "get") and "client_id" in v]
    return names[0] if names else None


def require() -> None:
    """Stop the script with a sign-in screen unless the visitor is signed in (or sign-in is off)."""
    if not enabled() or st.user.is_logged_in:
        return
    st.title("HDAP Studio")
    st.markdown("This server is shared by a team: sign in with your organisation's account "
                "to see the fleets, runs and downloads.")
    provider = _provider()
    st.button("Sign in", type="primary", icon=":material/login:", key="sign_in",
              on_click=st.login, args=() if provider is None else (provider,))
    st.stop()


def user_name() -> str | None:
    """The signed-in person's e-mail (or name, or subject); None when sign-in is off."""
    if not enabled() or not st.user.is_logged_in:
        return None
    for field in ("email", "name", "preferred_username", "sub"):
        value = st.user.get(field)
        if value:
            return str(value)
    return "signed in"


def sidebar() -> None:
    """Who is signed in, and a way out."""
    name = user_name()
    if name is None:
        return
    st.markdown(f"**Signed in:** {name}")
    st.button("Sign out", key="sign_out", on_click=st.logout, icon=":material/logout:")
