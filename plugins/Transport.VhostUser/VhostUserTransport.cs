using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Native;

namespace Vism.Transport.VhostUser;

/// <summary>
/// The <c>vhost-user</c> transport: the device listens on a Unix socket and serves one frontend
/// (QEMU, or vism's own <c>VhostUserFrontend</c>) at a time as a vhost-user backend. When the
/// frontend goes away, everything it held is released and the socket is served again, so a QEMU with
/// <c>reconnect-ms=</c> comes back to a clean device. All work happens on the device's loop.
/// </summary>
public sealed class VhostUserTransport : ITransport
{
    private readonly VhostUserOptions _options;
    private readonly DeviceDescription _description;
    private readonly IDeviceLoop _loop;
    private readonly IDeviceCounters _counters;
    private readonly ILogger _log;
    private readonly HashSet<WindowMapping> _stale = [];
    private IVirtioDevice? _device;
    private LoopListener? _listener;
    private VhostUserSession? _session;
    private bool _disposed;

    /// <summary>Created by the host through DI.</summary>
    /// <param name="options">The validated <c>[device.transport]</c> section.</param>
    /// <param name="description">The device.</param>
    /// <param name="host">The host (socket directory).</param>
    /// <param name="loop">The device's loop.</param>
    /// <param name="counters">The device's counters.</param>
    /// <param name="log">Logger.</param>
    public VhostUserTransport(VhostUserOptions options, DeviceDescription description, HostDescription host, IDeviceLoop loop,
        IDeviceCounters counters, ILogger<VhostUserTransport> log)
    {
        _options = options;
        _description = description;
        _loop = loop;
        _counters = counters;
        _log = log;
        Endpoint = options.ResolveSocketPath(description, host);
    }

    /// <inheritdoc />
    public string Endpoint { get; }

    /// <inheritdoc />
    public int VectorCount => _options.Vectors;

    /// <summary>Whether a frontend is connected now.</summary>
    public bool IsConnected => _session is { IsClosed: false };

    /// <summary>The current connection (tests inspect it).</summary>
    internal VhostUserSession? Session => _session;

    /// <inheritdoc />
    public void Start(IVirtioDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_device is not null) throw new InvalidOperationException($"{_description.Name}: the transport is already started");
        CheckLayout(device, _options.Vectors);
        _device = device;
        _listener = LoopListener.Start(Endpoint, _loop, OnAccepted, OnAcceptFailed);
        _log.LogInformation("{Device}: vhost-user backend listening on {Endpoint} ({Queues} queues, {Vectors} vectors)",
            _description.Name, Endpoint, device.QueueCount + _options.Vectors, _options.Vectors);
    }

    /// <summary>Refuses a device QEMU could not present: the shared-memory windows must be page
    /// multiples whose sum is a power of two (one PCI BAR), and the queue count must fit the 8-bit
    /// vhost-user queue index.</summary>
    internal static void CheckLayout(IVirtioDevice device, int vectorCount)
    {
        string name = device.Description.Name;
        int queues = device.QueueCount + vectorCount;
        if (queues is < 1 or > 256)
            throw new InvalidOperationException($"{name}: {queues} queues (device {device.QueueCount} + vectors {vectorCount}) do not fit vhost-user's 1..256");
        ulong total = 0;
        var seen = new HashSet<ShmId>();
        foreach (SharedMemoryWindow w in device.SharedMemory)
        {
            if (w.Id == ShmId.Undefined || !seen.Add(w.Id))
                throw new InvalidOperationException($"{name}: shared memory window id {w.Id} is 0 or repeated");
            if (w.Length == 0 || w.Length % TransportRules.PageSize != 0)
                throw new InvalidOperationException($"{name}: window {w.Id} of {w.Length} bytes is not a positive multiple of {TransportRules.PageSize}");
            if (w.Length > ulong.MaxValue - total)
                throw new InvalidOperationException($"{name}: the windows' total size overflows");
            total += w.Length;
        }
        if (total != 0 && !ulong.IsPow2(total))
            throw new InvalidOperationException(
                $"{name}: the shared memory windows add up to {total} bytes; QEMU puts them in one PCI BAR, whose size must be a power of two");
    }

    private void OnAcceptFailed(PosixException ex) =>
        _log.LogError("{Device}: accept on {Endpoint} failed: {Error}", _description.Name, Endpoint, ex.Message);

    private void OnAccepted(UnixSocket socket)
    {
        if (_device is null)
        {
            socket.Dispose();
            return;
        }
        if (IsConnected)
        {
            _counters.Increment("vhost-user.rejected-connections");
            _log.LogWarning("{Device}: refused a second frontend on {Endpoint}: one is connected", _description.Name, Endpoint);
            socket.Dispose();
            return;
        }
        _counters.Increment("vhost-user.connections");
        _log.LogInformation("{Device}: frontend connected on {Endpoint}", _description.Name, Endpoint);
        try
        {
            _session = new VhostUserSession(this, _device, socket, _options, _loop, _log, _counters);
        }
        catch (Exception ex) when (ex is PosixException or IOException)
        {
            _log.LogError("{Device}: could not set up the connection: {Error}", _description.Name, ex.Message);
            socket.Dispose();
        }
    }

    internal void OnSessionClosed(VhostUserSession session)
    {
        if (ReferenceEquals(_session, session)) _session = null;
    }

    /// <summary>Mappings the frontend may still hold from before a reset or a reconnect; they are
    /// unmapped at the next start (QEMU keeps mappings over a pause, and drops them on a guest reset).</summary>
    internal void AddStale(WindowMapping mapping) => _stale.Add(mapping);

    internal bool IsStale(WindowMapping mapping) => _stale.Contains(mapping);

    internal List<WindowMapping> TakeStale()
    {
        var list = _stale.ToList();
        _stale.Clear();
        return list;
    }

    /// <summary>Stops serving: closes the connection, the listener, and removes the socket file.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_disposed) return;
        await _loop.InvokeAsync(() =>
        {
            if (_disposed) return;
            _disposed = true;
            _session?.Close("the transport stopped");
            _session = null;
            _listener?.Dispose();
            _listener = null;
        }).ConfigureAwait(false);
    }
}
