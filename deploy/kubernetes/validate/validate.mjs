// Validates the Kubernetes manifests offline: every document of every file
// given (default: deploy/kubernetes/*.yaml) against the Kubernetes schema
// of kubernetes-models (picked by apiVersion and kind, validate() on each
// object), then this project's own rules for the Fabric NAT objects.
// Prints every problem as "FILE: KIND/NAME: PATH: MESSAGE" and exits 1 if
// there is any.
//
//   node validate.mjs [FILE.yaml...]      validate files
//   node validate.mjs --self-test         also prove that broken copies of
//                                         the real manifest fail
//
// Its packages are pinned in package.json/package-lock.json beside it and
// installed by tools/setup.sh (npm ci); run by //deploy:kubernetes_validate_test.
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
let YAML;
try {
  YAML = require("yaml");
  require("kubernetes-models/package.json");
} catch (e) {
  console.error(`cannot load the validator's packages from ${here}/node_modules ` +
    `(${e.message.split("\n")[0]}): run tools/setup.sh (npm ci there)`);
  process.exit(2);
}

// The model class for apiVersion/kind, or null when kubernetes-models has
// none (an unknown or misspelt kind is an error too).
function modelFor(apiVersion, kind) {
  if (typeof apiVersion !== "string" || typeof kind !== "string") return null;
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  if (!/^[a-z0-9.]*$/.test(group) || !/^v[0-9a-z]+$/.test(version) || !/^[A-Za-z]+$/.test(kind)) {
    return null;
  }
  try {
    const mod = require(group ? `kubernetes-models/${group}/${version}` : `kubernetes-models/${version}`);
    const Model = mod[kind];
    return typeof Model === "function" && Model.kind === kind && Model.apiVersion === apiVersion
      ? Model : null;
  } catch {
    return null;
  }
}

// Loads every document of a YAML file: [{doc, errors}] (YAML errors make a
// document with errors and no object).
export function loadFile(file) {
  const text = fs.readFileSync(file, "utf8");
  const out = [];
  for (const d of YAML.parseAllDocuments(text, { uniqueKeys: true, prettyErrors: true })) {
    const errors = d.errors.map((e) => `YAML: ${e.message.split("\n")[0]}`);
    const obj = errors.length ? null : d.toJS({ maxAliasCount: 0 });
    if (obj === null && errors.length === 0) continue;  // an empty document
    out.push({ obj, errors });
  }
  return out;
}

function describe(obj) {
  if (!obj || typeof obj !== "object") return "(not an object)";
  return `${obj.kind ?? "?"}/${obj.metadata?.name ?? "?"}`;
}

// Schema errors of one object, as ["PATH: MESSAGE"].
export function schemaErrors(obj) {
  if (!obj || typeof obj !== "object" || Array.isArray(obj)) return [": not a mapping"];
  const Model = modelFor(obj.apiVersion, obj.kind);
  if (!Model) {
    return [`: no Kubernetes schema for apiVersion ${JSON.stringify(obj.apiVersion)} kind ${JSON.stringify(obj.kind)}`];
  }
  try {
    new Model(obj).validate();
    return [];
  } catch (e) {
    if (!Array.isArray(e.errors)) return [`: ${e.message}`];
    return e.errors.map((err) => {
      let msg = err.message;
      if (err.params?.allowedValues) msg += ` (${err.params.allowedValues.join(", ")})`;
      return `${err.instancePath || "/"}: ${msg}`;
    });
  }
}

// ---- Fabric NAT's own rules -------------------------------------------------

const HOST_PATHS = ["/opt/cni/bin", "/etc/cni/net.d", "/run/fabric-nat", "/var/lib/fabric-nat"];
// The agent's capabilities, each for a reason given in fabric-nat.yaml.
const AGENT_CAPS = ["NET_ADMIN"];
const SOCKET = "/run/fabric-nat/agent.sock";

// x when it is an array, else [] (a schema error reports what it is).
const arr = (x) => (Array.isArray(x) ? x : []);

function sameList(a, b) {
  return JSON.stringify([...arr(a)].sort()) === JSON.stringify([...b].sort());
}

// Problems with the Fabric NAT objects among objs, as ["KIND/NAME: PATH: MESSAGE"].
export function projectErrors(objs) {
  const errs = [];
  const find = (kind) => objs.filter((o) => o && o.kind === kind);
  const bad = (o, p, msg) => errs.push(`${describe(o)}: ${p}: ${msg}`);

  for (const kind of ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"]) {
    if (find(kind).length === 0) errs.push(`no ${kind}`);
  }
  for (const sa of find("ServiceAccount")) {
    if (sa.automountServiceAccountToken !== false) {
      bad(sa, "/automountServiceAccountToken", "must be false: the agent does not call the Kubernetes API");
    }
  }
  for (const role of find("ClusterRole")) {
    if (arr(role.rules).length !== 0) {
      bad(role, "/rules", "the agent calls no Kubernetes API: grant nothing (or update this test with the verbs it uses)");
    }
  }
  for (const ds of find("DaemonSet")) {
    const spec = ds.spec ?? {};
    const pod = spec.template?.spec ?? {};
    const P = "/spec/template/spec";
    if (pod.hostNetwork !== true) bad(ds, `${P}/hostNetwork`, "must be true");
    if (pod.priorityClassName !== "system-node-critical") {
      bad(ds, `${P}/priorityClassName`, "must be system-node-critical");
    }
    if (!arr(pod.tolerations).some((t) => t.operator === "Exists" && !t.key && !t.effect)) {
      bad(ds, `${P}/tolerations`, "must tolerate every taint ({operator: Exists} without key or effect)");
    }
    if (spec.updateStrategy?.type !== "RollingUpdate" ||
        String(spec.updateStrategy?.rollingUpdate?.maxUnavailable) !== "1") {
      bad(ds, "/spec/updateStrategy", "must be RollingUpdate with maxUnavailable 1");
    }
    if (pod.automountServiceAccountToken !== false) {
      bad(ds, `${P}/automountServiceAccountToken`, "must be false");
    }
    if (pod.securityContext?.seccompProfile?.type !== "RuntimeDefault") {
      bad(ds, `${P}/securityContext/seccompProfile/type`, "must be RuntimeDefault");
    }
    const volumes = arr(pod.volumes);
    for (const hp of HOST_PATHS) {
      if (!volumes.some((v) => v.hostPath?.path === hp)) bad(ds, `${P}/volumes`, `no hostPath volume for ${hp}`);
    }
    for (const v of volumes) {
      if (v.hostPath && !HOST_PATHS.includes(v.hostPath.path)) {
        bad(ds, `${P}/volumes/${v.name}`, `hostPath ${v.hostPath.path} is not one the agent needs`);
      }
    }
    const containers = arr(pod.containers);
    if (arr(pod.initContainers).length) bad(ds, `${P}/initContainers`, "install-cni runs as a sidecar, not an init container");
    containers.forEach((c, i) => {
      const C = `${P}/containers/${i}`;
      const env = arr(c.env).find((e) => e.name === "NODE_NAME");
      if (env?.valueFrom?.fieldRef?.fieldPath !== "spec.nodeName") {
        bad(ds, `${C}/env`, "NODE_NAME must come from the downward API (fieldRef spec.nodeName)");
      }
      const sc = c.securityContext ?? {};
      if (sc.privileged === true) bad(ds, `${C}/securityContext/privileged`, "must not be privileged (see the comment on localhost)");
      if (sc.allowPrivilegeEscalation !== false) bad(ds, `${C}/securityContext/allowPrivilegeEscalation`, "must be false");
      if (!sameList(sc.capabilities?.drop, ["ALL"])) bad(ds, `${C}/securityContext/capabilities/drop`, "must drop ALL");
      const cmd = [...arr(c.command), ...arr(c.args)];
      if (c.name === "agent") {
        if (!sameList(sc.capabilities?.add, AGENT_CAPS)) {
          bad(ds, `${C}/securityContext/capabilities/add`, `must be exactly ${AGENT_CAPS.join(", ")}`);
        }
        const want = {
          startupProbe: ["health"], livenessProbe: ["health"], readinessProbe: ["health", "--ready"],
        };
        for (const [probe, tail] of Object.entries(want)) {
          const p = c[probe];
          const argv = arr(p?.exec?.command);
          if (!p?.exec || p.httpGet || p.tcpSocket || p.grpc ||
              !argv[0]?.endsWith("/fabricctl") || !argv.includes(`--socket=${SOCKET}`) ||
              JSON.stringify(argv.slice(-tail.length)) !== JSON.stringify(tail) ||
              argv.length !== 2 + tail.length) {
            bad(ds, `${C}/${probe}`, `must be exec fabricctl --socket=${SOCKET} ${tail.join(" ")}`);
          }
        }
        for (const m of ["/run/fabric-nat", "/var/lib/fabric-nat"]) {
          if (!arr(c.volumeMounts).some((v) => v.mountPath === m)) bad(ds, `${C}/volumeMounts`, `must mount ${m}`);
        }
      } else if (c.name === "install-cni") {
        if (arr(sc.capabilities?.add).length) bad(ds, `${C}/securityContext/capabilities/add`, "install-cni needs no capability");
        if (!cmd[0]?.endsWith("/fabric-agent") || cmd[1] !== "install-cni") {
          bad(ds, `${C}/command`, "must run fabric-agent install-cni");
        }
        for (const m of ["/host/opt/cni/bin", "/host/etc/cni/net.d", "/run/fabric-nat"]) {
          if (!arr(c.volumeMounts).some((v) => v.mountPath === m)) bad(ds, `${C}/volumeMounts`, `must mount ${m}`);
        }
      } else {
        bad(ds, C, `unexpected container ${c.name}`);
      }
    });
    for (const name of ["agent", "install-cni"]) {
      if (!containers.some((c) => c.name === name)) bad(ds, `${P}/containers`, `no ${name} container`);
    }
    // The agent and install-cni must share the same socket directory.
    const runVolume = (c) => arr(c?.volumeMounts).find((v) => v.mountPath === "/run/fabric-nat")?.name;
    const agent = containers.find((c) => c.name === "agent");
    const install = containers.find((c) => c.name === "install-cni");
    const rv = runVolume(agent);
    if (agent && install && (rv === undefined || rv !== runVolume(install) ||
        volumes.find((v) => v.name === rv)?.hostPath?.path !== "/run/fabric-nat")) {
      bad(ds, `${P}/containers`, "agent and install-cni must mount the hostPath /run/fabric-nat at /run/fabric-nat");
    }
  }
  return errs;
}

// Every problem in the given files, as printable lines.
export function validateFiles(files) {
  const lines = [];
  const all = [];
  for (const file of files) {
    let docs;
    try {
      docs = loadFile(file);
    } catch (e) {
      lines.push(`${file}: ${e.message}`);
      continue;
    }
    docs.forEach(({ obj, errors }, i) => {
      for (const e of errors) lines.push(`${file}: document ${i + 1}: ${e}`);
      if (errors.length) return;
      for (const e of schemaErrors(obj)) lines.push(`${file}: ${describe(obj)}: ${e}`);
      all.push(obj);
    });
  }
  let project;
  try {
    project = projectErrors(all);
  } catch (e) {
    project = [`cannot check Fabric NAT's rules: ${e.message}`];
  }
  for (const e of project) lines.push(`${files.join(",")}: ${e}`);
  return lines;
}

// ---- self-test ---------------------------------------------------------------

// Broken copies of the real objects, each of which must fail with an error
// mentioning `expect`.
const BREAKAGES = [
  ["hostNetwork of the wrong type", "/spec/template/spec/hostNetwork",
    (o) => { if (o.kind === "DaemonSet") o.spec.template.spec.hostNetwork = "true"; }],
  ["a container without a name", "/spec/template/spec/containers/0",
    (o) => { if (o.kind === "DaemonSet") delete o.spec.template.spec.containers[0].name; }],
  ["a port number as a string", "/spec/template/spec/containers/0/startupProbe/periodSeconds",
    (o) => { if (o.kind === "DaemonSet") o.spec.template.spec.containers[0].startupProbe.periodSeconds = "2s"; }],
  ["volumes as a mapping", "/spec/template/spec/volumes",
    (o) => { if (o.kind === "DaemonSet") o.spec.template.spec.volumes = { run: "/run/fabric-nat" }; }],
  ["ConfigMap data with a number", "/data/",
    (o) => { if (o.kind === "ConfigMap") o.data.replicas = 3; }],
  ["an unknown kind", "no Kubernetes schema",
    (o) => { if (o.kind === "ClusterRole") o.kind = "ClusterRol"; }],
  ["a binding without roleRef", "roleRef",
    (o) => { if (o.kind === "ClusterRoleBinding") delete o.roleRef; }],
  ["maxUnavailable 2", "maxUnavailable 1",
    (o) => { if (o.kind === "DaemonSet") o.spec.updateStrategy.rollingUpdate.maxUnavailable = 2; }],
  ["SYS_ADMIN added", "capabilities/add",
    (o) => { if (o.kind === "DaemonSet") o.spec.template.spec.containers[0].securityContext.capabilities.add.push("SYS_ADMIN"); }],
  ["an HTTP readiness probe", "readinessProbe",
    (o) => {
      if (o.kind === "DaemonSet") o.spec.template.spec.containers[0].readinessProbe = { httpGet: { port: 9333, path: "/healthz" } };
    }],
  ["readiness without --ready", "readinessProbe",
    (o) => { if (o.kind === "DaemonSet") o.spec.template.spec.containers[0].readinessProbe.exec.command.pop(); }],
  ["no state hostPath", "/var/lib/fabric-nat",
    (o) => {
      if (o.kind === "DaemonSet") {
        const s = o.spec.template.spec;
        s.volumes = s.volumes.filter((v) => v.hostPath?.path !== "/var/lib/fabric-nat");
      }
    }],
  ["NODE_NAME not from the downward API", "NODE_NAME",
    (o) => { if (o.kind === "DaemonSet") o.spec.template.spec.containers[0].env = [{ name: "NODE_NAME", value: "n1" }]; }],
  ["seccomp Unconfined", "seccompProfile",
    (o) => { if (o.kind === "DaemonSet") o.spec.template.spec.securityContext.seccompProfile.type = "Unconfined"; }],
  ["a toleration with a key only", "tolerations",
    (o) => { if (o.kind === "DaemonSet") o.spec.template.spec.tolerations = [{ key: "a", operator: "Exists" }]; }],
  ["a service account token", "automountServiceAccountToken",
    (o) => { if (o.kind === "ServiceAccount") o.automountServiceAccountToken = true; }],
];

function selfTest(files) {
  const objs = files.flatMap((f) => loadFile(f).map((d) => d.obj));
  const check = (list) => [
    ...list.flatMap((o) => schemaErrors(o).map((e) => `${describe(o)}: ${e}`)),
    ...projectErrors(list),
  ];
  const failures = [];
  if (check(objs).length) failures.push("the real manifest does not pass (see above)");
  for (const [what, expect, breakIt] of BREAKAGES) {
    const copy = structuredClone(objs);
    copy.forEach(breakIt);
    const errs = check(copy);
    const hit = errs.find((e) => e.includes(expect));
    if (!hit) {
      failures.push(`self-test: ${what}: expected an error about ${JSON.stringify(expect)}, got ${JSON.stringify(errs)}`);
    } else {
      console.log(`self-test: ${what}: rejected (${hit})`);
    }
  }
  return failures;
}

function main(argv) {
  const self = argv.includes("--self-test");
  let files = argv.filter((a) => a !== "--self-test");
  if (files.length === 0) {
    const dir = path.resolve(here, "..");
    files = fs.readdirSync(dir).filter((f) => f.endsWith(".yaml") || f.endsWith(".yml"))
      .sort().map((f) => path.join(dir, f));
  }
  if (files.length === 0) {
    console.error("no manifests to validate");
    return 1;
  }
  const lines = validateFiles(files);
  for (const l of lines) console.log(l);
  if (self) lines.push(...selfTest(files).map((l) => (console.log(l), l)));
  console.log(`${files.length} file(s), ${lines.length} problem(s)`);
  return lines.length ? 1 : 0;
}

process.exitCode = main(process.argv.slice(2));
