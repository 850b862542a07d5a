using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Win32.SafeHandles;
using Vism.Core;
using Vism.Native;
using Vism.Transport.VhostUser;
using Vism.VhostUser;

namespace Vism.Fuzz;

/// <summary>
/// The vhost-user backend session, as QEMU reaches it: Core's ISM device behind the real
/// <see cref="VhostUserTransport"/> on a real loop and Unix socket; the input is the frontend's
/// byte stream (<see cref="SocketFeed"/> layout; descriptors are a 1 MiB memfd on even pieces,
/// an eventfd on odd ones). Rules: those of <see cref="DeviceSocketTarget"/>, and everything the
/// backend sends is a well-framed version-1 reply.
/// </summary>
internal sealed class VhostUserSessionTarget : DeviceSocketTarget
{
    private readonly VhostUserTransport _transport;
    private readonly SafeFileHandle _memFd = MemFd.Create("vism-fuzz-guest", 1 << 20);
    private readonly EventFd _eventFd = EventFd.Create();

    public VhostUserSessionTarget()
        : base("fuzz-vhost")
    {
        _transport = new VhostUserTransport(new VhostUserOptions { Vectors = 2 }, Device.Description, Host, Device.Loop,
            new DeviceCounters(), NullLogger<VhostUserTransport>.Instance);
        Start(_transport);
    }

    protected override string Endpoint => _transport.Endpoint;

    protected override bool Connected => _transport.IsConnected;

    protected override SafeHandle Descriptor(int piece) => piece % 2 == 0 ? _memFd : _eventFd.Handle;

    protected override void Greet(UnixSocket frontend)
    {
        // vhost-user has no handshake: QEMU starts with GET_FEATURES, as the seeds do.
    }

    protected override void Drain(UnixSocket frontend)
    {
        using var framer = new MessageFramer(frontend, 4096);
        try
        {
            while (framer.TryRead() == ReadStatus.Message)
            {
                if (!framer.Header.IsReply)
                    throw new FuzzFinding($"the backend sent request {framer.Header.Request} on the main socket");
            }
        }
        catch (VhostUserProtocolException ex)
        {
            throw new FuzzFinding($"the backend broke the framing: {ex.Message}", ex);
        }
    }

    protected override void DisposeTransport()
    {
        _transport.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _memFd.Dispose();
        _eventFd.Dispose();
    }
}
