namespace Vism.Core;

/// <summary>
/// One run of a device's control path: it starts when the controlq has work and nothing serves
/// it, and ends when the queue is empty or when a reset, a failure (DEVICE_NEEDS_RESET), a controlq
/// stop or a disconnect ends it. A request whose run ended while it waited (for memory, for the
/// transport's mapping) completes into nothing: every wait in the control path goes through
/// <see cref="AwaitAsync{T}(ValueTask{T}, Action{T})"/>, which ends the request there instead of letting it touch the device
/// that was reset meanwhile.
/// </summary>
internal sealed class ControlRun
{
    private readonly CancellationTokenSource _cancel = new();

    /// <summary>Cancelled when the run ends.</summary>
    public CancellationToken Token => _cancel.Token;

    /// <summary>Whether a reset, failure, queue stop or disconnect ended the run.</summary>
    public bool Ended => _cancel.IsCancellationRequested;

    /// <summary>Ends the run; idempotent.</summary>
    public void End()
    {
        if (!_cancel.IsCancellationRequested) _cancel.Cancel();
    }

    /// <summary>Waits for <paramref name="work"/>; when the run ended meanwhile, hands the result to
    /// <paramref name="abandon"/> (to release what it holds) and ends the request with
    /// <see cref="RunEndedException"/>.</summary>
    public async ValueTask<T> AwaitAsync<T>(ValueTask<T> work, Action<T>? abandon = null)
    {
        T result = await work;
        if (Ended)
        {
            abandon?.Invoke(result);
            throw new RunEndedException();
        }
        return result;
    }

    /// <inheritdoc cref="AwaitAsync{T}(ValueTask{T}, Action{T})"/>
    public ValueTask<T> AwaitAsync<T>(Task<T> work, Action<T>? abandon = null) => AwaitAsync(new ValueTask<T>(work), abandon);

    /// <summary>The run a request belonged to ended while the request waited.</summary>
    internal sealed class RunEndedException() : Exception("the control run ended");
}
