using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Native;

namespace Vism.Transport.Mmio;

/// <summary>
/// The <c>mmio</c> transport: serves one device's virtio-mmio register window on a Unix socket
/// (docs/mmio-protocol.md). One VMM at a time; a second one is turned away with REJECT (BUSY).
/// When the VMM leaves, at any moment, the device disconnects (every attachment is released),
/// every descriptor it gave is closed and the socket is served again. Runs on the device's loop.
/// </summary>
public sealed class MmioTransport : ITransport
{
    private readonly SocketAccess _access;
    private readonly MmioOptions _options;
    private readonly IDeviceLoop _loop;
    private readonly IDeviceCounters _counters;
    private readonly ILogger _log;
    private IVirtioDevice? _device;
    private LoopListener? _listener;
    private MmioConnection? _connection;
    private bool _disposed;

    /// <summary>Created by the host through DI.</summary>
    /// <param name="options">The validated options.</param>
    /// <param name="description">The device's description (its name names the default socket).</param>
    /// <param name="host">The host (its socket directory).</param>
    /// <param name="loop">The device's loop.</param>
    /// <param name="counters">The device's counters.</param>
    /// <param name="log">The logger.</param>
    public MmioTransport(MmioOptions options, DeviceDescription description, HostDescription host, IDeviceLoop loop,
        IDeviceCounters counters, ILogger<MmioTransport> log)
    {
        _options = options;
        _loop = loop;
        _counters = counters;
        _log = log;
        Endpoint = options.ResolveSocketPath(host, description);
        _access = SocketAccess.For(options, host);
    }

    /// <inheritdoc />
    public string Endpoint { get; }

    /// <inheritdoc />
    public int VectorCount => _options.Vectors;

    /// <summary>Whether a VMM is connected now.</summary>
    public bool HasVmm => _connection is not null;

    /// <summary>The connected VMM's session, if any (diagnostics and tests; loop only).</summary>
    public MmioSession? Session => _connection?.Session;

    /// <inheritdoc />
    public void Start(IVirtioDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_device is not null) throw new InvalidOperationException("the transport is already started");
        _device = device;
        _listener = LoopListener.Start(Endpoint, _loop, OnAccepted, OnAcceptFailed, _access);
        _log.LogInformation("{Device}: serving the MMIO register window on {Endpoint}", device.Description.Name, Endpoint);
    }

    private void OnAcceptFailed(PosixException ex)
    {
        _counters.Increment("mmio.accept.failed");
        _log.LogWarning("{Device}: accept failed: {Error}", _device?.Description.Name, ex.Message);
    }

    private void OnAccepted(UnixSocket socket)
    {
        if (_device is null)
        {
            socket.Dispose();
            return;
        }
        if (_connection is not null)
        {
            _counters.Increment("mmio.vmm.rejected");
            _log.LogWarning("{Device}: a second VMM connected while one is attached; turned away", _device.Description.Name);
            MmioConnection.RejectBusy(socket, $"device {_device.Description.Name} already has a VMM");
            socket.Dispose();
            return;
        }
        _counters.Increment("mmio.vmm.connected");
        _connection = new MmioConnection(socket, _device, _options, _counters, _log, OnClosed);
        _connection.Start();
    }

    private void OnClosed(MmioConnection connection)
    {
        if (ReferenceEquals(_connection, connection)) _connection = null;
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (_disposed) return;
        _disposed = true;
        await _loop.InvokeAsync(() =>
        {
            _connection?.Dispose();
            _connection = null;
            _listener?.Dispose();
            _listener = null;
        }).ConfigureAwait(false);
    }
}
