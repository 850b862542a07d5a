using Vism.Abstractions;
using Vism.Conformance.Composition;
using Vism.Conformance.Probes;
using Vism.Core;
using Vism.Driver;

namespace Vism.Conformance;

/// <summary>A composed host whose devices each have a driver connected (<see cref="Peer"/>).</summary>
public sealed class Rig : IAsyncDisposable
{
    private readonly List<Peer> _peers = [];
    private bool _disposed;

    internal Rig(CheckContext context, IComposition composition)
    {
        Context = context;
        Composition = composition;
    }

    /// <summary>The check this rig belongs to.</summary>
    public CheckContext Context { get; }

    /// <summary>The host and its devices.</summary>
    public IComposition Composition { get; }

    /// <summary>One peer per device, in device order.</summary>
    public IReadOnlyList<Peer> Peers => _peers;

    /// <summary>The first device's peer.</summary>
    public Peer A => _peers[0];

    /// <summary>The second device's peer.</summary>
    public Peer B => _peers[1];

    /// <summary>The third device's peer.</summary>
    public Peer C => _peers[2];

    internal void AddPeer(ComposedDevice device, IsmClientOptions options)
    {
        var peer = new Peer(this, device);
        _peers.Add(peer);
        peer.Connect(options);
    }

    /// <summary>The host's view (devices, regions, references, memory use), after every device's loop
    /// has finished what earlier requests queued on it (regions freed on their home device's loop).</summary>
    /// <returns>The snapshot.</returns>
    public HostSnapshot Snapshot()
    {
        Settle();
        return Composition.Host.Snapshot();
    }

    /// <summary>Waits until every device's loop has run what is queued on it now, twice (work queued by
    /// that work included).</summary>
    public void Settle()
    {
        for (int round = 0; round < 2; round++)
            foreach (ComposedDevice d in Composition.Devices)
                if (!d.Device.Loop.InvokeAsync(() => true).Wait(Context.Options.ControlTimeout))
                    Context.Fail($"device {d.Name}'s loop did not answer within {Context.Options.ControlTimeout}");
    }

    /// <summary>Disconnects every driver (with a reset) and stops the host.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (Peer p in _peers)
            p.Close();
        await Composition.DisposeAsync().ConfigureAwait(false);
    }
}

/// <summary>One composed device and the driver connected to it, with expecting helpers: each
/// fails the check (with the device's ERR counters in the reason) when the device does not answer OK.</summary>
public sealed class Peer
{
    private readonly Rig _rig;
    private IsmClient? _client;
    private Updates? _updates;

    internal Peer(Rig rig, ComposedDevice device)
    {
        _rig = rig;
        Device = device;
    }

    /// <summary>The composed device.</summary>
    public ComposedDevice Device { get; }

    /// <summary>The device's name (<c>a</c>, <c>b</c>, ...).</summary>
    public string Name => Device.Name;

    /// <summary>The connected driver.</summary>
    public IsmClient Client => _client ?? throw new InvalidOperationException($"peer {Name} is disconnected");

    /// <summary>Whether a driver is connected.</summary>
    public bool Connected => _client is not null;

    /// <summary>The devid the driver read from config space.</summary>
    public ulong DevId => Client.DevId;

    /// <summary>The update events this driver receives (eventq or per-region vectors, whichever was negotiated).</summary>
    public Updates Updates => _updates ??= new Updates(_rig.Context, this);

    private CheckContext Ctx => _rig.Context;

    /// <summary>Connects a new driver (a new VMM connection) and starts the device with it.</summary>
    /// <param name="options">How the driver negotiates; null accepts every feature.</param>
    public void Connect(IsmClientOptions? options = null)
    {
        Close();
        IDriverTransport transport = Device.Connect();
        try
        {
            _client = IsmClient.Start(transport, options ?? Ctx.DefaultDriver);
        }
        catch
        {
            transport.Dispose();
            throw;
        }
    }

    /// <summary>Resets the device and starts it again over the same connection (a guest's driver reload).</summary>
    /// <param name="options">How the driver negotiates; null accepts every feature.</param>
    public void Restart(IsmClientOptions? options = null)
    {
        _updates = null;
        _client = IsmClient.Start(Client.Transport, options ?? Ctx.DefaultDriver);
    }

    /// <summary>Drops the connection without resetting the device first, as a VMM that is killed does.</summary>
    public void Kill()
    {
        IsmClient? client = _client;
        _client = null;
        _updates = null;
        client?.Transport.Dispose();
    }

    /// <summary>Resets the device and disconnects (a clean shutdown).</summary>
    internal void Close()
    {
        IsmClient? client = _client;
        _client = null;
        _updates = null;
        client?.Dispose();
    }

    /// <summary>The device's ERR counters as the host counts them (for failure reasons).</summary>
    /// <returns>E.g. <c>err.alloc.too-large=1</c>, or "no ERR counted".</returns>
    public string Errors()
    {
        if (Device.Device.Counters is not DeviceCounters counters)
            return "(counters not visible)";
        string[] errs = [.. counters.Snapshot().Where(kv => kv.Key.StartsWith("err.", StringComparison.Ordinal) && kv.Value != 0).Select(kv => $"{kv.Key}={kv.Value}")];
        return errs.Length == 0 ? "no ERR counted" : string.Join(", ", errs);
    }

    /// <summary>ALLOC, expecting OK.</summary>
    /// <param name="size">Bytes; null for <c>region_size</c>.</param>
    /// <returns>The token and offset.</returns>
    public (ulong Token, ulong Offset) Alloc(ulong? size = null)
    {
        AllocReply r = Client.Alloc(size ?? Client.RegionSize);
        Ctx.Expect(r.Ok, $"device {Name}: ALLOC of {size ?? Client.RegionSize} bytes answered ack {r.Ack}, expected OK ({Errors()})");
        return (r.Token, r.Offset);
    }

    /// <summary>ATTACH, expecting OK.</summary>
    /// <param name="token">The token.</param>
    /// <returns>The offset.</returns>
    public ulong Attach(ulong token)
    {
        AttachReply r = Client.Attach(token);
        Ctx.Expect(r.Ok, $"device {Name}: ATTACH answered ack {r.Ack}, expected OK ({Errors()})");
        return r.Offset;
    }

    /// <summary>DETACH, expecting OK.</summary>
    /// <param name="offset">The region's offset.</param>
    public void Detach(ulong offset)
    {
        byte ack = Client.Detach(offset);
        Ctx.Expect(ack == IsmControl.AckOk, $"device {Name}: DETACH of 0x{offset:x} answered ack {ack}, expected OK ({Errors()})");
    }

    /// <summary>GRANT, expecting OK.</summary>
    /// <param name="offset">The region's offset.</param>
    /// <param name="peerDevId">The peer's devid, or 0 for the default entry.</param>
    /// <param name="permissions">The permissions.</param>
    public void Grant(ulong offset, ulong peerDevId, IsmPermissions permissions)
    {
        byte ack = Client.Grant(offset, peerDevId, permissions);
        Ctx.Expect(ack == IsmControl.AckOk, $"device {Name}: GRANT {permissions} to devid {peerDevId} answered ack {ack}, expected OK ({Errors()})");
    }

    /// <summary>Expects <paramref name="ack"/> to be ERR.</summary>
    /// <param name="ack">The ack byte.</param>
    /// <param name="what">The request, for the reason.</param>
    public void ExpectErr(byte ack, string what) =>
        Ctx.Expect(ack == IsmControl.AckErr, $"device {Name}: {what} answered ack {ack}, expected ERR ({IsmControl.AckErr})");

    /// <summary>The address of <paramref name="offset"/> in the driver-side REGIONS window; skips the
    /// check when the transport's driver side has no such view in this process.</summary>
    /// <param name="offset">Offset in the REGIONS window.</param>
    /// <returns>The address.</returns>
    public nint Address(ulong offset)
    {
        nint window = Client.Transport.ShmAddress(ShmId.Regions);
        if (window == 0)
            Ctx.Skip($"transport '{Ctx.Combination.Transport}' gives the driver no view of the REGIONS window in this process",
                "its driver connector must map the window here, as the in-repo connectors do");
        ulong length = Client.Transport.ShmLength(ShmId.Regions);
        Ctx.Expect(offset < length, $"device {Name}: offset 0x{offset:x} lies outside the {length}-byte REGIONS window");
        return window + (nint)offset;
    }

    /// <summary>Writes <paramref name="data"/> into the region at <paramref name="offset"/>, expecting it to be writable.</summary>
    /// <param name="offset">Region offset.</param>
    /// <param name="data">The bytes.</param>
    /// <param name="at">Where in the region.</param>
    public void Write(ulong offset, ReadOnlySpan<byte> data, ulong at = 0) =>
        Ctx.Expect(SafeMemory.TryWrite(Address(offset) + (nint)at, data),
            $"device {Name}: writing {data.Length} bytes at 0x{offset + at:x} of its REGIONS window faulted");

    /// <summary>Reads <paramref name="length"/> bytes of the region at <paramref name="offset"/>, expecting them to be readable.</summary>
    /// <param name="offset">Region offset.</param>
    /// <param name="length">Bytes.</param>
    /// <param name="at">Where in the region.</param>
    /// <returns>The bytes.</returns>
    public byte[] Read(ulong offset, int length, ulong at = 0)
    {
        byte[] data = new byte[length];
        Ctx.Expect(SafeMemory.TryRead(Address(offset) + (nint)at, data),
            $"device {Name}: reading {length} bytes at 0x{offset + at:x} of its REGIONS window faulted");
        return data;
    }

    /// <summary>How the region at <paramref name="offset"/> is mapped in this driver's window now.</summary>
    /// <param name="offset">Region offset.</param>
    /// <returns>The /proc/self/maps entries covering its first page.</returns>
    public IReadOnlyList<MapsEntry> Mapping(ulong offset) => ProcMaps.Covering(Address(offset), 4096);
}
