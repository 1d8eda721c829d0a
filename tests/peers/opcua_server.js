#!/usr/bin/env node
// An independent OPC UA server for the collector tests and bench (node-opcua, not asyncua).
//
//   node tests/peers/opcua_server.js --port P [--variables N] [--rate HZ] [--security none,sign,signandencrypt]
//        [--pki DIR] [--auto-accept] [--user NAME:PASSWORD] [--no-anonymous] [--namespaces-before K]
//
// Binds 127.0.0.1 only. Prints one line "READY port=P ns=I uri=U cert=PATH" once it listens.
// Address space (namespace --uri, default urn:factoryedge:test):
//   Objects/Reactor/Pressure, Temperature (Double), Running (Boolean), Batch (String), Count (Int32)
//   Objects/Tank/Level, Objects/Tank/Flow (Double)
//   Objects/Bulk/V0 .. V{N-1} (Double), node ids s=Bulk/V{i}
// Every value changes --rate times per second. Node ids are strings "s=<Folder>/<Name>".
// --namespaces-before K registers K dummy namespaces first, so our namespace index differs across restarts.
// --pki DIR keeps the server's own certificate across restarts (own/certs/certificate.pem); client certificates are
// trusted when copied (DER or PEM) into DIR/trusted/certs, user certificates into DIR/user/trusted/certs.
// SIGUSR1 disables every monitored item of every session without telling the clients: a silent subscription.
"use strict";

const path = require("path");

function parseArgs(argv) {
    const args = {
        port: 4840, variables: 100, rate: 1, security: "none", pki: null, autoAccept: false, user: null,
        anonymous: true, namespacesBefore: 0, uri: "urn:factoryedge:test",
    };
    for (let i = 2; i < argv.length; i++) {
        const a = argv[i];
        const next = () => argv[++i];
        if (a === "--port") args.port = parseInt(next(), 10);
        else if (a === "--variables") args.variables = parseInt(next(), 10);
        else if (a === "--rate") args.rate = parseFloat(next());
        else if (a === "--security") args.security = next();
        else if (a === "--pki") args.pki = next();
        else if (a === "--auto-accept") args.autoAccept = true;
        else if (a === "--user") args.user = next();
        else if (a === "--no-anonymous") args.anonymous = false;
        else if (a === "--namespaces-before") args.namespacesBefore = parseInt(next(), 10);
        else if (a === "--uri") args.uri = next();
        else { console.error(`unknown argument ${a}`); process.exit(2); }
    }
    return args;
}

async function main() {
    const args = parseArgs(process.argv);
    const opcua = await import("node-opcua");
    const { OPCUAServer, OPCUACertificateManager, MessageSecurityMode, SecurityPolicy, DataType, Variant,
        StatusCodes, MonitoringMode } = opcua;

    const modeOf = { none: MessageSecurityMode.None, sign: MessageSecurityMode.Sign,
        signandencrypt: MessageSecurityMode.SignAndEncrypt };
    const modes = args.security.split(",").map((m) => modeOf[m.trim().toLowerCase()]);
    if (modes.some((m) => m === undefined)) { console.error(`bad --security ${args.security}`); process.exit(2); }
    const policies = [];
    if (modes.includes(MessageSecurityMode.None)) policies.push(SecurityPolicy.None);
    if (modes.some((m) => m !== MessageSecurityMode.None)) policies.push(SecurityPolicy.Basic256Sha256);

    const pki = path.resolve(args.pki || path.join(process.cwd(), "opcua-pki"));
    const serverCertificateManager = new OPCUACertificateManager({
        rootFolder: pki, automaticallyAcceptUnknownCertificate: args.autoAccept,
    });
    const userCertificateManager = new OPCUACertificateManager({
        rootFolder: path.join(pki, "user"), automaticallyAcceptUnknownCertificate: args.autoAccept,
    });
    let users = null;
    if (args.user) {
        const cut = args.user.indexOf(":");
        users = { name: args.user.slice(0, cut), password: args.user.slice(cut + 1) };
    }
    const server = new OPCUAServer({
        port: args.port,
        host: "127.0.0.1",
        hostname: "127.0.0.1",
        securityModes: modes,
        securityPolicies: policies,
        allowAnonymous: args.anonymous,
        serverCertificateManager,
        userCertificateManager,
        serverInfo: { applicationUri: "urn:factoryedge:test-peer:node-opcua", applicationName: { text: "factoryedge test peer" } },
        userManager: {
            isValidUser: (name, password) => users !== null && name === users.name && password === users.password,
        },
        maxConnectionsPerEndpoint: 100,
        serverCapabilities: { maxSessions: 100 },
    });
    await server.initialize();

    const addressSpace = server.engine.addressSpace;
    for (let i = 0; i < args.namespacesBefore; i++) addressSpace.registerNamespace(`urn:factoryedge:dummy:${i}`);
    const ns = addressSpace.registerNamespace(args.uri);
    const objects = addressSpace.rootFolder.objects;
    const variables = [];
    const folder = (name) => ns.addFolder(objects, { browseName: name, nodeId: `s=${name}` });
    const add = (parent, fname, name, dataType, make) => {
        const v = ns.addVariable({
            componentOf: parent, browseName: name, nodeId: `s=${fname}/${name}`, dataType,
            value: { dataType: DataType[dataType], value: make(0) },
        });
        variables.push({ v, dataType: DataType[dataType], make });
    };
    const reactor = folder("Reactor");
    add(reactor, "Reactor", "Pressure", "Double", (t) => 2700 + (t % 1000) * 0.01);
    add(reactor, "Reactor", "Temperature", "Double", (t) => 120 + (t % 500) * 0.01);
    add(reactor, "Reactor", "Running", "Boolean", (t) => t % 2 === 0);
    add(reactor, "Reactor", "Batch", "String", (t) => `B${t}`);
    add(reactor, "Reactor", "Count", "Int32", (t) => t % 2147483647);
    const tank = folder("Tank");
    add(tank, "Tank", "Level", "Double", (t) => 50 + (t % 100) * 0.1);
    add(tank, "Tank", "Flow", "Double", (t) => 10 + (t % 100) * 0.01);
    const bulk = folder("Bulk");
    for (let i = 0; i < args.variables; i++) add(bulk, "Bulk", `V${i}`, "Double", (t) => i + t * 0.001);

    let tick = 0;
    let changes = 0;
    const period = Math.max(1, Math.round(1000 / args.rate));
    setInterval(() => {
        tick += 1;
        const now = new Date();
        for (const { v, dataType, make } of variables) {
            v.setValueFromSource(new Variant({ dataType, value: make(tick) }), StatusCodes.Good, now);
        }
        changes += variables.length;
    }, period);

    process.on("SIGUSR1", () => {
        let n = 0;
        for (const session of Object.values(server.engine._sessions)) {
            for (const sub of Object.values(session.publishEngine._subscriptions)) {
                for (const item of sub.monitoredItems.values()) {
                    item.setMonitoringMode(MonitoringMode.Disabled);
                    n += 1;
                }
            }
        }
        console.log(`MUTED ${n} monitored items`);
    });
    process.on("SIGUSR2", () => console.log(`CHANGES ${changes} sessions=${server.currentSessionCount}`));
    // a restart in a test must be quick: close sessions, but never wait more than a second for them
    const stop = async () => { setTimeout(() => process.exit(0), 1000); await server.shutdown(0); process.exit(0); };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);

    await server.start();
    const cert = path.join(pki, "own", "certs", "certificate.pem");
    console.log(`READY port=${args.port} ns=${ns.index} uri=${args.uri} cert=${cert} ` +
        `variables=${variables.length} changes_per_s=${Math.round(variables.length * 1000 / period)}`);
}

main().catch((err) => { console.error(err); process.exit(1); });
