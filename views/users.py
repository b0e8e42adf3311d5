"""User accounts (admins only; the store checks the role again on every change)."""

import pandas as pd
import streamlit as st

import appkit
from bmcore.auth import ROLES, TECHNOLOGIST
from bmcore.cases import CaseError
from bmcore.text import md

who = appkit.restricted_page("Users", "users", "Managing user accounts needs an admin account.")
store = appkit.get_store()

users = store.list_users()
st.dataframe(pd.DataFrame(users).drop(columns=["id"]), hide_index=True, width="stretch")
st.caption("Roles: viewer reads cases; technologist also classifies and reviews; pathologist also signs off and "
           "reopens; admin also deletes cases and manages accounts. Accounts from the identity provider take their "
           "role from it at every sign-in.")

if msg := st.session_state.pop("users_msg", None):
    getattr(st, msg[0])(msg[1])

left, right = st.columns(2)
# emptied only once the account is added: a refused form keeps what the admin entered (the role above all: an admin
# who retyped only the name would otherwise add a pathologist as a technologist)
st.session_state.setdefault("new_user_role", TECHNOLOGIST)
with left, st.form("add_user"):
    st.markdown("**Add a local account**")
    name = st.text_input("User name (no spaces)", key="new_user_name")
    display = st.text_input("Name shown on signatures and reports", key="new_user_display")
    role = st.selectbox("Role", ROLES, key="new_user_role")
    pw1 = st.text_input("Password (at least 10 characters)", type="password", key="new_user_pw1")
    pw2 = st.text_input("Password again", type="password", key="new_user_pw2")
    if st.form_submit_button("Add account"):
        try:
            if pw1 != pw2:
                raise CaseError("the two passwords differ")
            store.add_user(name, role, pw1, display_name=display, by=who)
        except CaseError as exc:
            st.error(f"Not added: {md(exc)}")
        else:
            st.session_state["users_msg"] = ("success", f"Added {md(name.strip())} ({role}).")
            appkit.forget_form("new_user_")
            st.rerun()

with right:
    st.markdown("**Change an account**")
    names = [u["username"] for u in users]
    pick = st.selectbox("Account", names, index=None, placeholder="Choose an account…", key="users_pick",
                        on_change=appkit.forget_form, args=("account_",))  # another account: a fresh form
    if pick:
        u = next(x for x in users if x["username"] == pick)
        now = {"role": u["role"], "disabled": bool(u["disabled"])}
        shown = appkit.form_source("account_", now, "account_role")
        # keyed and filled once from ``shown``: another admin's change does not replace what this admin chose
        st.session_state.setdefault("account_role", shown["role"])
        st.session_state.setdefault("account_state", "disabled" if shown["disabled"] else "active")
        if now != shown:
            st.warning(f"Another admin changed {md(pick)} after this form was filled in: it is now {now['role']}, "
                       f"{'disabled' if now['disabled'] else 'active'}. Saving this form is refused until you load "
                       "the account as it is now.")
            st.button("Load the account as it is now (replaces what this form holds)", key="account_reload",
                      on_click=appkit.forget_form, args=("account_",))
        with st.form("change_user"):
            new_role = st.selectbox("Role", ROLES, key="account_role")
            state = st.radio("Status", ["active", "disabled"], horizontal=True, key="account_state")
            pw = st.text_input("New password (at least 10 characters; leave empty to keep; a reset restarts the count of failed sign-ins)", type="password",
                               disabled=u["source"] != "local", key="account_password")
            if st.form_submit_button("Save changes"):
                try:
                    store.update_user(pick, role=new_role, disabled=state == "disabled", password=pw or None, by=who,
                                      expected=shown)
                except CaseError as exc:  # a conflict included: nothing saved, the form keeps what it holds
                    st.error(f"Not saved: {md(exc)}")
                else:
                    st.session_state["users_msg"] = ("success", f"Saved the changes to {md(pick)}.")
                    appkit.forget_form("account_")
                    st.rerun()

st.markdown("#### Sign-ins and account changes (newest first)")
st.dataframe(pd.DataFrame(store.login_events(300)), hide_index=True, width="stretch")
