using System.Runtime.InteropServices;
using Vism.Abstractions;

namespace Vism.Testing;

/// <summary>A loop for pure state-machine tests: everything runs inline on the calling thread; it
/// watches no fds and runs no timers.</summary>
public sealed class InlineLoop : IDeviceLoop
{
    /// <inheritdoc />
    public bool IsOnLoop => true;

    /// <inheritdoc />
    public void Post(Action work) => work();

    /// <inheritdoc />
    public IDisposable WatchReadable(SafeHandle fd, Action onReadable) => throw new NotSupportedException();

    /// <inheritdoc />
    public IDisposable Schedule(TimeSpan due, Action callback) => throw new NotSupportedException();
}
