using Microsoft.Win32.SafeHandles;
using Vism.Native;

namespace Vism.Transport.VhostUser;

/// <summary>Where a ring lies in guest-physical memory.</summary>
internal readonly record struct RingLayout(ulong Descriptors, ulong Available, ulong Used);

/// <summary>
/// The state vhost-user keeps for one queue (rust-vmm's <c>VringState</c>): what the frontend said
/// about it (size, addresses, base, kick/call/err fds, enabled) and whether it runs on the device.
/// </summary>
internal sealed class Vring : IDisposable
{
    public ushort Size;
    public RingLayout? Layout;
    public ushort Base;
    public EventFd? Kick;
    public IDisposable? KickWatch;
    public EventFd? Call;
    public SafeFileHandle? Err;
    public bool Started;
    public bool Enabled;
    public bool Running;

    /// <summary>A kick arrived before the ring ran; it is delivered when it runs.</summary>
    public bool KickPending;

    public void DropKick()
    {
        KickWatch?.Dispose();
        KickWatch = null;
        Kick?.Dispose();
        Kick = null;
        Started = false;
        KickPending = false;
    }

    /// <summary>Device reset: the ring stops and forgets its base; call fds stay (QEMU sends new ones on start).</summary>
    public void Reset(bool enabled)
    {
        DropKick();
        Running = false;
        Base = 0;
        Enabled = enabled;
    }

    public void Dispose()
    {
        DropKick();
        Call?.Dispose();
        Call = null;
        Err?.Dispose();
        Err = null;
    }
}
