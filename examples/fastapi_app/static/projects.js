// The example's page: the org's projects, kept live by useMessageBus("PROJECT.*").
// Plain React without JSX (no build step): h = React.createElement.
import { configureMessageBus, useMessageBus } from "/bus/outbox-bus.js";

const React = globalThis.React;
const h = React.createElement;
const RESYNC = "projects:resync";

configureMessageBus({
  React,
  // Events were missed (the page was away longer than the replay window): reload the list.
  onResync: () => window.dispatchEvent(new Event(RESYNC)),
});

function merge(list, project) {
  if (!list || list.some((p) => p.id === project.id)) return list;
  return [...list, project].sort((a, b) => a.id - b.id);
}

function Projects() {
  const [org, setOrg] = React.useState("");
  const [projects, setProjects] = React.useState(null);
  const [fresh, setFresh] = React.useState(() => new Set());

  const load = React.useCallback(async () => {
    const response = await fetch("/api/projects", { headers: { Accept: "application/json" } });
    const body = await response.json();
    setOrg(body.org);
    // Events that arrived while the request ran are kept: merge, never replace them away.
    setProjects((list) => (list || []).reduce(merge, body.projects));
  }, []);

  React.useEffect(() => {
    load();
    window.addEventListener(RESYNC, load);
    return () => window.removeEventListener(RESYNC, load);
  }, [load]);

  useMessageBus("PROJECT.*", (payload, event) => {
    if (event.type !== "PROJECT.CREATED") return;
    setProjects((list) => merge(list || [], payload));
    setFresh((ids) => new Set(ids).add(payload.id));
  });

  if (projects === null) return h("p", { className: "status" }, "Loading…");
  return h(
    "section",
    null,
    h("p", { className: "status", "data-org": org }, `Org: ${org} · ${projects.length} project(s)`),
    h(
      "ul",
      { id: "project-list" },
      projects.map((p) =>
        h("li", { key: p.id, "data-id": p.id, className: fresh.has(p.id) ? "new" : "" }, p.name),
      ),
    ),
  );
}

// Submit without leaving the page: the new project shows up through the bus, as it does in other tabs.
document.getElementById("new-project").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = e.currentTarget;
  const response = await fetch("/projects", {
    method: "POST",
    body: new FormData(form),
    headers: { Accept: "application/json" },
  });
  if (response.ok) form.reset();
  else alert((await response.json()).detail || `error ${response.status}`);
});

ReactDOM.createRoot(document.getElementById("projects")).render(h(Projects));
