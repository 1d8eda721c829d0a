#!/usr/bin/env node
// An independent OPC UA server for the collector tests and bench (node-opcua, not asyncua).
//
//   node tests/peers/opcua_server.js --port P [--variables N] [--rate HZ] [--security none,sign,signandencrypt]
//        [--pki DIR] [--auto-accept] [--user NAME:PASSWORD] [--no-anonymous] [--namespaces-before K] [--values]
//
// Binds 127.0.0.1 only. Prints one line "READY port=P ns=I uri=U cert=PATH" once it listens.
// Address space (namespace --uri, default urn:factoryedge:test):
//   Objects/Reactor/Pressure, Temperature (Double), Running (Boolean), Batch (String), Count (Int32)
//   Objects/Tank/Level, Objects/Tank/Flow (Double)
//   Objects/Bulk/V0 .. V{N-1} (Double), node ids s=Bulk/V{i}
//   Objects/Analog/Temperature: an AnalogItem (Double, 21.5, static) with EURange 0..100, InstrumentRange -50..150,
//     EngineeringUnits degree Celsius (UNECE CEL, UnitId 4408652) and a Description
//   Objects/Faults/Sensor: a Double (0, static) whose status is BadSensorFailure
// --values adds Objects/Values/<Name> (node ids s=Values/<Name>, static) of every kind a value can be, and loads the
// structured types of tests/peers/opcua_types.xml (namespace urn:factoryedge:test:types):
//   DoubleArray Double[3], Int32Matrix Int32[2][3], StringArray String[3], ByteArray Byte[3], Text LocalizedText,
//   Bytes ByteString, Guid, Name QualifiedName, Node NodeId, Time DateTime, Status StatusCode (BadSensorFailure),
//   Mixed BaseDataType[] of Variants (Double, String, Boolean, Int32), Batch a BatchRecord structure (with an Int32[]
//   field and a nested Setpoint structure), Batches BatchRecord[2], Opaque a structure whose encoding id
//   (types namespace, i=9999) no data type describes: a value no client can decode.
// --names adds a second namespace, <uri>:line2, and nested folders Objects/Plant/Line1/Tank1 holding Level (an
//   AnalogItem, EURange 0..100, EngineeringUnits percent) and Temperature twice, once per namespace: the same browse
//   name and node id string s=Plant/Line1/Tank1/Temperature in both (READY also prints ns2=I uri2=U).
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
        anonymous: true, namespacesBefore: 0, uri: "urn:factoryedge:test", values: false, names: false,
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
        else if (a === "--names") args.names = true;
        else if (a === "--values") args.values = true;
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
        ...(args.values ? { nodesets: [opcua.nodesets.standard, path.join(__dirname, "opcua_types.xml")] } : {}),
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
    // units and ranges as properties (Part 8), for the collector's META records; static, so not in `variables`
    ns.addAnalogDataItem({
        componentOf: folder("Analog"), browseName: "Temperature", nodeId: "s=Analog/Temperature", dataType: "Double",
        description: "Analog temperature", engineeringUnitsRange: { low: 0, high: 100 },
        instrumentRange: { low: -50, high: 150 }, engineeringUnits: opcua.standardUnits.degree_celsius,
        value: { dataType: DataType.Double, value: 21.5 },
    });

    // a failed sensor: a value whose status is BadSensorFailure (static), for the records' status codes
    const failed = ns.addVariable({ componentOf: folder("Faults"), browseName: "Sensor", nodeId: "s=Faults/Sensor",
        dataType: "Double", value: { dataType: DataType.Double, value: 0 } });
    failed.setValueFromSource(new Variant({ dataType: DataType.Double, value: 0 }), StatusCodes.BadSensorFailure);

    if (args.values) await addValues(opcua, addressSpace, ns, folder("Values"));
    let names = "";
    if (args.names) {
        const ns2 = addressSpace.registerNamespace(`${args.uri}:line2`);
        const sub = (parent, name, id) => ns.addFolder(parent, { browseName: name, nodeId: `s=${id}` });
        const tank1 = sub(sub(sub(objects, "Plant", "Plant"), "Line1", "Plant/Line1"), "Tank1", "Plant/Line1/Tank1");
        const level = ns.addAnalogDataItem({
            componentOf: tank1, browseName: "Level", nodeId: "s=Plant/Line1/Tank1/Level", dataType: "Double",
            engineeringUnitsRange: { low: 0, high: 100 }, engineeringUnits: opcua.standardUnits.percent,
            value: { dataType: DataType.Double, value: 0 },
        });
        variables.push({ v: level, dataType: DataType.Double, make: (t) => t % 100 });
        for (const [space, base] of [[ns, 20], [ns2, 80]]) {
            const v = space.addVariable({
                componentOf: tank1, browseName: "Temperature", nodeId: "s=Plant/Line1/Tank1/Temperature",
                dataType: "Double", value: { dataType: DataType.Double, value: base },
            });
            variables.push({ v, dataType: DataType.Double, make: (t) => base + (t % 10) * 0.1 });
        }
        names = ` ns2=${ns2.index} uri2=${ns2.namespaceUri}`;
    }

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
        `variables=${variables.length} changes_per_s=${Math.round(variables.length * 1000 / period)}${names}`);
}

// One static variable of each kind of value (see --values above).
async function addValues(opcua, addressSpace, ns, parent) {
    const { DataType, Variant, VariantArrayType, LocalizedText, QualifiedName, StatusCodes, coerceNodeId,
        makeNodeId } = opcua;
    const { OpaqueStructure } = await import("node-opcua-extension-object");
    // node-opcua copies a value on every read as new value.constructor(value): an OpaqueStructure copied so loses its
    // encoding id and body (it goes out as a null structure); this one copies both
    class Opaque extends OpaqueStructure {
        constructor(nodeIdOrCopy, buffer) {
            const copy = nodeIdOrCopy instanceof OpaqueStructure;
            super(copy ? nodeIdOrCopy.nodeId : nodeIdOrCopy, copy ? nodeIdOrCopy.buffer : buffer);
        }
    }
    const types = addressSpace.getNamespaceIndex("urn:factoryedge:test:types");
    const add = (name, dataType, value, extra = {}) => ns.addVariable({
        componentOf: parent, browseName: name, nodeId: `s=Values/${name}`, dataType, value, ...extra,
    });
    const array = (dataType, value) => ({ dataType, arrayType: VariantArrayType.Array, value });
    add("DoubleArray", "Double", array(DataType.Double, [1.5, 2.5, -3.25]), { valueRank: 1, arrayDimensions: [3] });
    add("Int32Matrix", "Int32", { dataType: DataType.Int32, arrayType: VariantArrayType.Matrix, dimensions: [2, 3],
        value: new Int32Array([1, 2, 3, 4, 5, 6]) }, { valueRank: 2, arrayDimensions: [2, 3] });
    add("StringArray", "String", array(DataType.String, ["a", "b", "\u00fc"]), { valueRank: 1, arrayDimensions: [3] });
    add("ByteArray", "Byte", array(DataType.Byte, new Uint8Array([0, 1, 255])), { valueRank: 1, arrayDimensions: [3] });
    add("Text", "LocalizedText", { dataType: DataType.LocalizedText,
        value: new LocalizedText({ text: "Gr\u00fc\u00dfe", locale: "de-DE" }) });
    add("Bytes", "ByteString", { dataType: DataType.ByteString, value: Buffer.from([0, 1, 2, 254, 255]) });
    add("Guid", "Guid", { dataType: DataType.Guid, value: "72962B91-FA75-4AE6-8D28-B404DC7DAF63" });
    add("Name", "QualifiedName", { dataType: DataType.QualifiedName,
        value: new QualifiedName({ namespaceIndex: ns.index, name: "Q" }) });
    add("Node", "NodeId", { dataType: DataType.NodeId, value: coerceNodeId(`ns=${ns.index};s=Reactor/Pressure`) });
    add("Time", "DateTime", { dataType: DataType.DateTime, value: new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 6)) });
    add("Status", "StatusCode", { dataType: DataType.StatusCode, value: StatusCodes.BadSensorFailure });
    add("Mixed", "BaseDataType", array(DataType.Variant, [
        new Variant({ dataType: DataType.Double, value: 1.5 }), new Variant({ dataType: DataType.String, value: "x" }),
        new Variant({ dataType: DataType.Boolean, value: true }), new Variant({ dataType: DataType.Int32, value: 7 }),
    ]), { valueRank: 1 });
    const batchType = addressSpace.findDataType("BatchRecord", types);
    const setpointType = addressSpace.findDataType("Setpoint", types);
    const batch = (id, quantity) => addressSpace.constructExtensionObject(batchType, {
        id, quantity, steps: [1, 2, 3], done: true,
        target: addressSpace.constructExtensionObject(setpointType, { name: "T", value: 80 }),
    });
    add("Batch", batchType, { dataType: DataType.ExtensionObject, value: batch("B-7", 12.5) });
    add("Batches", batchType, array(DataType.ExtensionObject, [batch("B-8", 1), batch("B-9", 2)]), { valueRank: 1 });
    add("Opaque", "Structure", { dataType: DataType.ExtensionObject,
        value: new Opaque(makeNodeId(9999, types), Buffer.from([1, 2, 3, 4])) });
}

main().catch((err) => { console.error(err); process.exit(1); });
