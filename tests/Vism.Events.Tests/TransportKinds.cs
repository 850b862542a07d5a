using Microsoft.Extensions.Logging;
using Vism.Driver.Mmio;
using Vism.Driver.VhostUser;
using Vism.Transport.Mmio;
using Vism.Transport.VhostUser;

namespace Vism.Events.Tests;

/// <summary>A device served by a transport, seen from both ends.</summary>
/// <param name="Driver">The driver side (what a VMM or guest driver uses).</param>
/// <param name="AwaitNotifies">Returns once every NOTIFY write the driver made so far has reached
/// the device and the device has routed it.</param>
/// <param name="Stop">Stops the device side after the driver side is disposed; null when disposing
/// <paramref name="Driver"/> already did (the in-memory transport is both ends).</param>
internal sealed record Served(IDriverTransport Driver, Action AwaitNotifies, Func<Task>? Stop = null);

/// <summary>How the transport-agnostic tests serve a device and reach it as a driver.</summary>
internal interface ITransportKind
{
    /// <summary>The name a theory row shows.</summary>
    string Name { get; }

    /// <summary>Whether every NOTIFY write reaches the device as one write (trapped, as MMIO does).
    /// False for vhost-user: the NOTIFY window is shared memory the transport polls, so writes to a
    /// slot between two scans are seen as one.</summary>
    bool TrapsNotifyWrites { get; }

    /// <summary>Whether a write to a slot that holds no region reaches the device (trapped, or a
    /// doorbell), where it is counted as an error. False for vhost-user, which scans only the slots in use.</summary>
    bool SeesUnassignedSlots { get; }

    /// <summary>Serves <paramref name="device"/> with a transport offering <paramref name="vectors"/>
    /// per-region vectors and connects a driver side to it.</summary>
    /// <param name="device">A device not yet served.</param>
    /// <param name="vectors">Per-region interrupt vectors the transport offers.</param>
    /// <param name="scratch">A directory for sockets and files of this test.</param>
    /// <param name="logs">Where the transport logs.</param>
    /// <returns>Both ends.</returns>
    Served Serve(IsmDevice device, int vectors, string scratch, ILoggerFactory logs);
}

/// <summary>The device side and driver side in one process, without sockets.</summary>
internal sealed class InMemoryKind : ITransportKind
{
    public string Name => "in-memory";

    public bool TrapsNotifyWrites => true;

    public bool SeesUnassignedSlots => true;

    public Served Serve(IsmDevice device, int vectors, string scratch, ILoggerFactory logs) =>
        new(InMemoryTransport.StartFor(device, ramSize: 8 << 20, vectorCount: vectors), () => TransportKinds.Settle(device));
}

/// <summary>The MMIO transport on a Unix socket, driven by the Driver's VMM client (as a VMM
/// forwarding a guest's trapped accesses would); per-region vectors are eventfds the VMM gave.
/// NOTIFY-window writes ring doorbell eventfds and each virtqueue has a call eventfd of its own
/// (the client's defaults, as a KVM VMM's ioeventfds and a vhost-user frontend's call fds: writes
/// the device has not read yet coalesce) or, with <paramref name="doorbells"/> false, notifies travel
/// as NOTIFY messages (each one delivered) and used buffers take the standard line with its
/// InterruptStatus READ + ACK.</summary>
internal sealed class MmioKind(bool doorbells) : ITransportKind
{
    public string Name => doorbells ? "mmio" : "mmio-messages";

    public bool TrapsNotifyWrites => !doorbells;

    public bool SeesUnassignedSlots => true;

    public Served Serve(IsmDevice device, int vectors, string scratch, ILoggerFactory logs)
    {
        var options = new MmioOptions { Vectors = vectors, SocketPath = Path.Combine(scratch, device.Description.Name + ".mmio") };
        var transport = new MmioTransport(options, device.Description, Host(scratch), device.Loop, device.Counters, logs.CreateLogger<MmioTransport>());
        ITransport started = TransportKinds.Start(device, transport);
        try
        {
            MmioVmmClient vmm = MmioVmmClient.Connect(transport.Endpoint, options: new MmioVmmOptions { NotifyDoorbells = doorbells, QueueCallFds = doorbells });
            // NOTIFY messages are handled in order with register accesses: a read's answer means
            // every earlier write was handled. A doorbell the device has read was handled in the
            // loop turn that read it, which the read's answer (and the settle) comes after.
            return new Served(vmm, () =>
            {
                Assert.True(vmm.WaitDoorbellsRead(EventRig.Wait), "the device read every doorbell");
                vmm.ReadStatus();
                TransportKinds.Settle(device);
            }, () => TransportKinds.Stop(device, started));
        }
        catch
        {
            TransportKinds.Stop(device, started).Wait(EventRig.Wait);
            throw;
        }
    }

    internal static HostDescription Host(string scratch) => new() { Gid = 0x0e0e_0001, StateDirectory = scratch, SocketDirectory = scratch };
}

/// <summary>The vhost-user transport driven by the Driver's frontend (QEMU's behaviour); per-region
/// vectors are the call fds of the queues after the device's own.</summary>
internal sealed class VhostUserKind : ITransportKind
{
    public string Name => "vhost-user";

    public bool TrapsNotifyWrites => false;

    public bool SeesUnassignedSlots => false;

    public Served Serve(IsmDevice device, int vectors, string scratch, ILoggerFactory logs)
    {
        var options = new VhostUserOptions { Vectors = vectors, SocketPath = Path.Combine(scratch, device.Description.Name + ".vu") };
        var transport = new VhostUserTransport(options, device.Description, MmioKind.Host(scratch), device.Loop, device.Counters, logs.CreateLogger<VhostUserTransport>());
        ITransport started = TransportKinds.Start(device, transport);
        var ram = new GuestRam(8 << 20);
        try
        {
            VhostUserFrontend frontend = VhostUserFrontend.Connect(transport.Endpoint, ram, new VhostUserFrontendOptions { VectorCount = vectors });
            return new Served(frontend, () => AwaitScanned(frontend, device), async () =>
            {
                await TransportKinds.Stop(device, started);
                ram.Dispose();
            });
        }
        catch
        {
            TransportKinds.Stop(device, started).Wait(EventRig.Wait);
            ram.Dispose();
            throw;
        }
    }

    /// <summary>Every write made so far is reported once the transport has scanned the window on the
    /// device's loop; any kick makes it scan (the doorbell). The kick fd is readable when Kick
    /// returns, so the loop's next wait sees it, and a loop runs fd callbacks before posted work:
    /// after two loop turns the scan has run, and so has the turn that reported its writes.</summary>
    private static void AwaitScanned(VhostUserFrontend frontend, IsmDevice device)
    {
        frontend.Kick(Virtio.ControlQueue);
        TransportKinds.Settle(device);
        TransportKinds.Settle(device);
    }
}

/// <summary>Every transport the end-to-end theories run over. A transport that lands on main is
/// added here with one line.</summary>
internal static class TransportKinds
{
    private static readonly ITransportKind[] All =
    [
        new InMemoryKind(),
        new MmioKind(doorbells: true),
        new MmioKind(doorbells: false),
        new VhostUserKind(),
    ];

    /// <summary>Starts <paramref name="transport"/> for <paramref name="device"/> on the device's loop.</summary>
    public static ITransport Start(IsmDevice device, ITransport transport)
    {
        device.Loop.InvokeAsync(() => transport.Start(device)).WaitAsync(EventRig.Wait).GetAwaiter().GetResult();
        return transport;
    }

    /// <summary>Waits until what was posted to the device's loop so far has run.</summary>
    public static void Settle(IsmDevice device) =>
        device.Loop.InvokeAsync(() => true).WaitAsync(EventRig.Wait).GetAwaiter().GetResult();

    /// <summary>Stops a transport on its device's loop, as the host does.</summary>
    public static Task Stop(IsmDevice device, ITransport transport) =>
        device.Loop.InvokeAsync(async () =>
        {
            await transport.DisposeAsync();
            return true;
        });

    public static ITransportKind Get(string name) =>
        All.FirstOrDefault(k => k.Name == name) ?? throw new ArgumentException($"no transport kind '{name}'", nameof(name));

    /// <summary>Theory rows: one per transport.</summary>
    public static TheoryData<string> Names()
    {
        var data = new TheoryData<string>();
        foreach (ITransportKind k in All)
            data.Add(k.Name);
        return data;
    }

    /// <summary>Theory rows: every transport with every event plugin.</summary>
    public static TheoryData<string, EventsKind> NamesAndEvents()
    {
        var data = new TheoryData<string, EventsKind>();
        foreach (ITransportKind k in All)
            foreach (EventsKind e in Enum.GetValues<EventsKind>())
                data.Add(k.Name, e);
        return data;
    }
}
